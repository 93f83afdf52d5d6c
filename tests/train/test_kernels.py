"""Kernel options of the training config: chunked linear cross-entropy equals the plain loss (fp32, loss and
gradients), torch.compile trains like the plain model, and CUDA-only options are refused in one line on CPU."""
from __future__ import annotations

import pytest
import torch

from train_helpers import metrics


def test_chunked_linear_cross_entropy_equals_plain_cross_entropy():
    from mmzoo.train.kernels import chunked_linear_cross_entropy

    torch.manual_seed(0)
    hidden = torch.randn(3, 17, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 8, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 50, (3, 17))
    labels[0, :5] = -100
    labels[2, 9:] = -100
    plain = torch.nn.functional.cross_entropy((hidden @ weight.t()).reshape(-1, 50), labels.reshape(-1), ignore_index=-100)
    plain_grads = torch.autograd.grad(plain, (hidden, weight))
    chunked = chunked_linear_cross_entropy(hidden, weight, labels, chunk_rows=7)  # 35 labelled rows: 5 chunks
    chunked_grads = torch.autograd.grad(chunked, (hidden, weight))
    assert float(chunked.detach()) == pytest.approx(float(plain.detach()), abs=1e-12)
    for a, b in zip(chunked_grads, plain_grads):
        assert torch.allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("packed", [False, True])
def test_chunked_cross_entropy_model_equals_plain_model(ws, packed):
    """The model forward with ``train.cross_entropy: chunked`` gives transformers' loss and gradients."""
    from mmzoo.models.load import load_model
    from mmzoo.train.config import load_config
    from mmzoo.train.data import TrainData
    from mmzoo.train.kernels import apply_kernels

    data = TrainData(ws.data, ws.images, ws.hf, seed=0)
    batch = data.packed_batch([0, 1, 2]) if packed else data.batch([0, 1, 2])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "position_ids", "pixel_values")
              if batch.get(k) is not None}
    results = []
    for kind in ("plain", "chunked"):
        model = load_model(ws.hf, attn_implementation="sdpa").float().train()
        apply_kernels(model, load_config(data=ws.config("k", train={"cross_entropy": kind})))
        loss = model(**inputs, use_cache=False).loss
        loss.backward()
        results.append((float(loss.detach()), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (plain, plain_grads), (chunked, chunked_grads) = results
    assert chunked == pytest.approx(plain, abs=1e-6)
    assert chunked_grads.keys() == plain_grads.keys()
    assert max(float((chunked_grads[n] - plain_grads[n]).abs().max()) for n in plain_grads) <= 1e-6


def test_training_with_chunked_cross_entropy_matches_plain(ws):
    from mmzoo.train.config import load_config
    from mmzoo.train.loop import run_training

    losses = {}
    for kind in ("plain", "chunked"):
        cfg = load_config(data=ws.config(f"ce-{kind}", train={"cross_entropy": kind, "max_steps": 3}))
        run_training(cfg)
        losses[kind] = [r["loss"] for r in metrics(cfg.output_dir)]
    assert losses["chunked"] == pytest.approx(losses["plain"], rel=1e-5)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_model_gives_the_plain_loss_and_gradients(ws, monkeypatch, backend):
    """train.compile through dynamo + AOT autograd (forward and backward graphs), with the aot_eager backend and with
    inductor (`compile: true`), which generates and builds C++ kernels here with the machine's gcc: ~100 s on two
    busy cores the first time, ~15 s from its cache (kept in ~/.cache/mmzoo-tests/inductor, MMZOO_TEST_CACHE)."""
    from torch._dynamo.utils import counters

    from side_env import cache_root
    from mmzoo.models.load import load_model
    from mmzoo.train.config import load_config
    from mmzoo.train.data import TrainData
    from mmzoo.train.kernels import apply_kernels

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache_root() / "inductor"))
    data = TrainData(ws.data, ws.images, ws.hf, seed=0)
    batch = data.batch([0, 1])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "pixel_values")}
    results = []
    counters.clear()
    for compile_ in (False, True if backend == "inductor" else backend):
        model = load_model(ws.hf, attn_implementation="sdpa").float().train()
        apply_kernels(model, load_config(data=ws.config("c", train={"compile": compile_})))
        loss = model(**inputs).loss
        loss.backward()
        results.append((float(loss.detach()), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    if backend == "inductor":  # inductor compiled (or loaded from its cache) a forward and a backward graph
        assert counters["inductor"]["fxgraph_cache_miss"] + counters["inductor"]["fxgraph_cache_hit"] >= 2, counters
    (plain, plain_grads), (compiled, compiled_grads) = results
    assert compiled == pytest.approx(plain, rel=1e-5)
    # the vision layer after vision_feature_layer feeds nothing: eager leaves its gradients None, compiled zeros
    assert set(plain_grads) <= set(compiled_grads)
    assert all(float(compiled_grads[n].abs().max()) == 0 for n in set(compiled_grads) - set(plain_grads))
    assert max(float((compiled_grads[n] - plain_grads[n]).abs().max()) for n in plain_grads) <= 1e-5


@pytest.mark.parametrize("setting, message", [
    ({"cross_entropy": "liger"}, "train.cross_entropy liger needs a CUDA GPU"),
    ({"liger_kernels": True}, "train.liger_kernels needs a CUDA GPU"),
])
def test_cuda_only_kernels_are_refused_on_cpu(ws, capsys, setting, message):
    from mmzoo.cli import main

    params = ws.write("liger", train=setting)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--params", str(params)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_fused_cross_entropy_refused_under_zero3(ws):
    from mmzoo.errors import ConfigError
    from mmzoo.train.config import load_config
    from mmzoo.train.kernels import check_kernels

    with pytest.raises(ConfigError, match="needs deepspeed.zero_stage 0, 1 or 2"):
        check_kernels(load_config(data=ws.config("z3", train={"cross_entropy": "chunked"}, deepspeed={"zero_stage": 3})), "cpu")


def test_fused_adamw_on_cuda_only():
    from mmzoo.train.config import load_config
    from mmzoo.train.loop import optimizer_kernel

    base = {"stage": "sft", "model": "m", "data": {"path": "d", "images": "i"}, "output_dir": "o"}
    assert optimizer_kernel(load_config(data=base), "cuda") == {"fused": True}
    assert optimizer_kernel(load_config(data=base), "cpu") == {"foreach": False}
    offload = {**base, "deepspeed": {"offload_optimizer": True}}
    assert optimizer_kernel(load_config(data=offload), "cuda") == {"foreach": False}


def test_zero_1_2_on_one_gpu_warns():
    from mmzoo.train.config import load_config
    from mmzoo.train.preflight import zero_stage_warnings

    def cfg(**deepspeed):
        return load_config(data={"stage": "sft", "model": "m", "data": {"path": "d", "images": "i"}, "output_dir": "o",
                                 "deepspeed": deepspeed})

    assert "zero_stage 0 is faster" in zero_stage_warnings(cfg(zero_stage=2), 1, cuda=True)[0]
    assert zero_stage_warnings(cfg(zero_stage=2), 2, cuda=True) == []
    assert zero_stage_warnings(cfg(zero_stage=0), 1, cuda=True) == []
    assert zero_stage_warnings(cfg(zero_stage=2, offload_optimizer=True), 1, cuda=True) == []
    assert zero_stage_warnings(cfg(zero_stage=2), 1, cuda=False) == []


def test_compile_is_per_transformer_block_and_one_graph_serves_every_layer(ws):
    """`compile: true` compiles each decoder and vision encoder layer in place (names unchanged); the layers of a
    stack share one compiled graph, and new packed lengths and image counts recompile once (then dynamic), not per
    layer or per length. (A pack of one sample or one image specialises once more: dynamo's 0/1 specialisation.)"""
    from torch._dynamo.utils import counters

    from mmzoo.models.load import load_model
    from mmzoo.train.data import TrainData
    from mmzoo.train.kernels import compile_blocks

    model = load_model(ws.hf, attn_implementation="sdpa").float().train()
    names = [n for n, _ in model.named_parameters()]
    stacks = [m for n, m in model.named_modules() if n.endswith(".layers") and isinstance(m, torch.nn.ModuleList)]
    assert compile_blocks(model, "aot_eager") == sum(len(s) for s in stacks) >= 4
    assert [n for n, _ in model.named_parameters()] == names
    assert all(layer._compiled_call_impl is not None for s in stacks for layer in s)
    data = TrainData(ws.data, ws.images, ws.hf, seed=0)
    counters.clear()
    graphs = []
    for indices in ([0, 1], [1, 2], [0, 2, 3], [1, 2, 3], [0, 3]):  # packs of new lengths and image counts
        batch = data.packed_batch(indices)
        inputs = {k: batch[k] for k in ("input_ids", "labels", "position_ids", "pixel_values") if batch.get(k) is not None}
        model(**inputs, use_cache=False).loss.backward()
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[-1] == graphs[2], graphs  # the last two packs compiled nothing new


def test_compile_refuses_a_model_without_a_stack_of_layers():
    from mmzoo.errors import ConfigError
    from mmzoo.train.kernels import compile_blocks

    with pytest.raises(ConfigError, match="found no stack of transformer layers to compile in Sequential"):
        compile_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)), "aot_eager")
