"""Padding-free packing: a packed micro batch gives the loss and gradients of the same samples padded (fp32),
for a dense and an MoE model, with images; the pack plan is deterministic and resumable; training packs."""
from __future__ import annotations

import pytest
import torch

from train_helpers import metrics


def _data(ws):
    from mmzoo.train.data import TrainData

    return TrainData(ws.data, ws.images, ws.hf, seed=0)


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "position_ids", "pixel_values")
              if batch.get(k) is not None}
    loss = model(**inputs, use_cache=False).loss  # as the training loop calls it (packed samples need no cache)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(model, padded, packed):
    loss_padded, grads_padded = _loss_and_grads(model, padded)
    loss_packed, grads_packed = _loss_and_grads(model, packed)
    assert float(loss_packed) == pytest.approx(float(loss_padded), abs=1e-5)
    assert grads_packed.keys() == grads_padded.keys() and len(grads_padded) > 10
    worst = max(float((grads_packed[n] - grads_padded[n]).abs().max()) for n in grads_padded)
    assert worst <= 1e-5, worst


def _variable_lengths(data, count=4):
    lengths = data.sample_lengths()
    chosen, seen = [], set()
    for i, n in enumerate(lengths.tolist()):  # samples of different lengths: the padded batch has padding
        if n not in seen:
            chosen.append(i)
            seen.add(n)
    assert len(chosen) >= 2
    return chosen[:count]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_batch_equals_padded_batch_dense(ws, attn):
    from mmzoo.models.load import load_model

    data = _data(ws)
    indices = _variable_lengths(data)
    padded, packed = data.batch(indices), data.packed_batch(indices)
    assert (padded["attention_mask"] == 0).any(), "the padded batch should hold padding"
    assert packed["input_ids"].shape == (1, int(data.sample_lengths()[indices].sum()))
    assert packed["pixel_values"].shape == padded["pixel_values"].shape
    torch.manual_seed(0)
    model = load_model(ws.hf, attn_implementation=attn).float().train()
    _assert_same(model, padded, packed)


def test_packed_batch_equals_padded_batch_moe(ws):
    """MoE (modality routing, every layer): the routing of each token is its own, so with the load-balancing
    loss switched off packed = padded exactly; with it on they agree where no padding enters it (equal lengths:
    the padded aux loss averages over pad tokens too, the packed one over real tokens only)."""
    from mmzoo.models.load import load_model
    from mmzoo.train.moe import find_blocks

    data = _data(ws)
    model = load_model(ws.moe, attn_implementation="sdpa").float().train()
    blocks = find_blocks(model)
    assert blocks
    for _, block in blocks:
        block.text_coef = block.image_coef = 0.0
    indices = _variable_lengths(data)
    _assert_same(model, data.batch(indices), data.packed_batch(indices))

    for _, block in blocks:
        block.text_coef, block.image_coef = 0.01, 0.02
    lengths = data.sample_lengths()
    same = [i for i, n in enumerate(lengths.tolist()) if n == lengths[0]][:3]
    assert len(same) >= 2
    padded = data.batch(same)
    assert bool(padded["attention_mask"].all())
    loss, _ = _loss_and_grads(model, padded)
    assert model(**{k: padded[k] for k in ("input_ids", "attention_mask", "labels", "pixel_values")}).aux_loss > 0
    _assert_same(model, padded, data.packed_batch(same))


def test_first_token_of_every_packed_sample_has_no_label(ws):
    data = _data(ws)
    indices = [0, 1, 2]
    packed = data.packed_batch(indices)
    starts = torch.cumsum(torch.tensor([0] + packed["sample_lengths"].tolist()[:-1]), 0)
    assert (packed["labels"][0, starts] == -100).all()
    assert (packed["position_ids"][0, starts] == 0).all()
    assert int(packed["position_ids"].max()) == int(packed["sample_lengths"].max()) - 1


def test_pack_plan_is_greedy_bounded_and_the_same_from_any_start(ws):
    from mmzoo.errors import ConfigError
    from mmzoo.train.packing import PackPlan

    data = _data(ws)
    lengths = data.sample_lengths()
    budget = int(lengths.max()) * 2 + 1
    plan = PackPlan(data.order, lengths, budget)
    packs = [plan.pack(k) for k in range(12)]
    stream = data.order.indices(0, sum(len(p) for p in packs))
    assert [i for p in packs for i in p] == stream  # stream order, nothing skipped or repeated
    for k, pack in enumerate(packs):
        assert sum(int(lengths[i]) for i in pack) <= budget
        nxt = packs[k + 1][0] if k + 1 < len(packs) else None
        if nxt is not None:  # greedy: the next sample did not fit
            assert sum(int(lengths[i]) for i in pack) + int(lengths[nxt]) > budget
    late = PackPlan(data.order, lengths, budget)
    assert late.pack(9) == packs[9]  # a resumed run computes the same packs
    with pytest.raises(ConfigError, match="smaller than the longest sample"):
        PackPlan(data.order, lengths, int(lengths.max()) - 1)


def test_training_with_packing(ws):
    """Packed training runs, learns, counts only real tokens, and resumes exactly."""
    from mmzoo.train.config import load_config
    from mmzoo.train.loop import run_training

    data = _data(ws)
    budget = int(data.sample_lengths().max()) * 3
    sections = dict(train={"max_steps": 4, "lr": 5e-3, "lr_scheduler": "constant", "packing": True,
                           "max_tokens": budget, "save_every": 2, "micro_batch_size": 1, "global_batch_size": 2},
                    deepspeed={"zero_stage": 0})
    cfg = load_config(data=ws.config("packed", **sections))
    run_training(cfg)
    rows = metrics(cfg.output_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert all(r["tokens"] <= 2 * budget and r["tflops"] > 0 for r in rows)
    import shutil

    resumed = load_config(data=ws.config("packed-resumed", **sections))
    run_training(resumed.model_copy(update={"train": resumed.train.model_copy(update={"max_steps": 2})}))
    run_training(resumed, resume="auto")
    again = metrics(resumed.output_dir)
    assert [(r["step"], r["tokens"]) for r in again] == [(r["step"], r["tokens"]) for r in rows]
    assert [r["loss"] for r in again] == pytest.approx([r["loss"] for r in rows], rel=1e-5)
    shutil.rmtree(resumed.output_dir)


def test_packing_config_is_checked(ws, capsys):
    from mmzoo.cli import main
    from mmzoo.errors import ConfigError
    from mmzoo.train.config import load_config

    with pytest.raises(ConfigError, match="packing needs max_tokens"):
        load_config(data=ws.config("p", train={"packing": True}))
    with pytest.raises(ConfigError, match="set packing: true"):
        load_config(data=ws.config("p", train={"max_tokens": 100}))
    params = ws.write("packing-too-small", train={"packing": True, "max_tokens": 8})
    with pytest.raises(SystemExit) as exc:
        main(["train", "--params", str(params)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.max_tokens 8 is smaller than the longest sample" in err[0], err


def test_varlen_attention_adapter_gives_the_padded_loss(ws, monkeypatch):
    """The GPU path's plumbing on CPU: PyTorch's varlen flash kernel is CUDA-only, so a reference with its
    signature (causal attention within each cu_seqlens segment) stands in; what is tested is mmzoo's adapter —
    sample bounds from transformers' position ids, layouts, grouped-query heads — not the kernel."""
    import torch.nn.functional as F

    from mmzoo.models.load import load_model
    from mmzoo.train import packing

    calls = []

    def reference_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, window_size=(-1, -1),
                         enable_gqa=False, **_):
        assert window_size == (-1, 0) and cu_seq_q.dtype == torch.int32
        calls.append((cu_seq_q.tolist(), max_q))
        outs = []
        for a, b in zip(cu_seq_q[:-1].tolist(), cu_seq_q[1:].tolist()):
            q, k, v = (t[a:b].transpose(0, 1) for t in (query, key, value))
            outs.append(F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=enable_gqa).transpose(0, 1))
        return torch.cat(outs)

    monkeypatch.setattr(packing, "_varlen_attn", lambda: reference_varlen)
    data = _data(ws)
    indices = _variable_lengths(data)
    model = load_model(ws.hf, attn_implementation="sdpa").float().train()
    padded_loss, padded_grads = _loss_and_grads(model, data.batch(indices))
    assert packing.select_packed_attention(model, accelerator="cuda", precision="bf16") == packing.VARLEN
    assert packing.select_packed_attention(load_model(ws.hf), accelerator="cpu", precision="bf16") == "sdpa"
    packed_loss, packed_grads = _loss_and_grads(model, data.packed_batch(indices))
    lengths = data.sample_lengths()[indices].tolist()
    assert calls and calls[0] == ([0, *torch.tensor(lengths).cumsum(0).tolist()], max(lengths))
    assert float(packed_loss) == pytest.approx(float(padded_loss), abs=1e-5)
    assert max(float((packed_grads[n] - padded_grads[n]).abs().max()) for n in padded_grads) <= 1e-5


# -- flash_attention_2: mmzoo's plumbing into transformers' varlen path -------------------------------------
# flash-attn cannot be installed here (CUDA build). These tests put a block-diagonal reference attention written in
# plain torch where transformers keeps the loaded flash-attn kernels (modeling_flash_attention_utils'
# lazily-imported functions), with flash-attn 2's own signatures, so that everything above the kernel — mmzoo's
# packed batch, the model's attention_mask/position_ids handling, transformers' choice of the varlen path and its
# cu_seqlens — runs for real. It checks mmzoo's plumbing, not flash-attn's numerics.
def _reference_attention(q, k, v, softmax_scale, causal):
    """One sequence: q [Sq, H, D], k/v [Sk, Hkv, D] → [Sq, H, D], in plain torch (what a flash kernel computes)."""
    if k.shape[1] != q.shape[1]:  # grouped-query attention
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) * (softmax_scale or q.shape[-1] ** -0.5)
    if causal:
        allowed = torch.ones(q.shape[0], k.shape[0], dtype=torch.bool, device=q.device).tril(k.shape[0] - q.shape[0])
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


class _ReferenceFlashAttention2:
    """flash_attn_func / flash_attn_varlen_func stand-ins (flash-attn 2.x signatures) that record their calls."""

    def __init__(self):
        self.varlen_calls, self.dense_calls = [], []

    def flash_attn_func(self, q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                        softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
        assert dropout_p == 0.0 and window_size == (-1, -1)
        self.dense_calls.append({"shape": tuple(q.shape), "causal": causal})
        return torch.stack([_reference_attention(q[b], k[b], v[b], softmax_scale, causal) for b in range(q.shape[0])])

    def flash_attn_varlen_func(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                               softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                               deterministic=False, return_attn_probs=False, block_table=None):
        assert dropout_p == 0.0 and window_size == (-1, -1)
        self.varlen_calls.append({"cu_seqlens_q": cu_seqlens_q.tolist(), "cu_seqlens_k": cu_seqlens_k.tolist(),
                                  "dtype": cu_seqlens_q.dtype, "max_seqlen_q": int(max_seqlen_q),
                                  "max_seqlen_k": int(max_seqlen_k), "causal": causal, "tokens": q.shape[0]})
        bounds = cu_seqlens_q.tolist()
        return torch.cat([_reference_attention(q[a:b], k[a:b], v[a:b], softmax_scale, causal)
                          for a, b in zip(bounds, bounds[1:])])


@pytest.fixture
def reference_flash_attention_2(monkeypatch):
    import transformers.modeling_flash_attention_utils as fa

    kernels = _ReferenceFlashAttention2()
    # where lazy_import_flash_attention keeps the kernels it loaded: "flash_attention_2" counts as loaded
    monkeypatch.setattr(fa, "_loaded_implementation", "flash_attention_2")
    monkeypatch.setattr(fa, "_flash_fn", kernels.flash_attn_func)
    monkeypatch.setattr(fa, "_flash_varlen_fn", kernels.flash_attn_varlen_func)
    monkeypatch.setattr(fa, "_flash_with_kvcache_fn", None)
    monkeypatch.setattr(fa, "_pad_fn", fa._pad_input)
    monkeypatch.setattr(fa, "_unpad_fn", fa._unpad_input)
    monkeypatch.setattr(fa, "_process_flash_kwargs_fn", fa._lazy_define_process_function(kernels.flash_attn_varlen_func))
    monkeypatch.setattr(fa, "_process_with_kvcache_kwargs_fn", dict)
    return kernels


def _with_flash_attention_2(model):
    for config in (model.config, model.config.text_config, model.config.vision_config):
        config._attn_implementation = "flash_attention_2"  # what attn_implementation="flash_attention_2" sets
    return model


def test_flash_attention_2_plumbing_packed_rows_take_the_varlen_path(ws, reference_flash_attention_2):
    """A packed micro batch as the training loop builds it reaches flash-attn's varlen kernel in every LLM layer with
    the samples' cu_seqlens and longest length, and gives the loss and gradients of the padded batch (sdpa)."""
    from mmzoo.models.load import load_model
    from mmzoo.train.data import to_device
    from mmzoo.train.packing import select_packed_attention

    data = _data(ws)
    indices = _variable_lengths(data)
    padded, packed = data.batch(indices), data.packed_batch(indices)
    torch.manual_seed(0)
    reference = load_model(ws.hf, attn_implementation="sdpa").float().train()
    loss_padded, grads_padded = _loss_and_grads(reference, padded)

    torch.manual_seed(0)
    model = _with_flash_attention_2(load_model(ws.hf, attn_implementation="sdpa").float().train())
    # mmzoo leaves flash_attention_2 to transformers (its own varlen switch is for sdpa on a GPU only)
    assert select_packed_attention(model, accelerator="cuda", precision="bf16") == "flash_attention_2"
    inputs = to_device(packed, torch.device("cpu"), torch.float32)
    assert "attention_mask" not in inputs and inputs["use_cache"] is False  # no mask: transformers reads position_ids
    model.zero_grad(set_to_none=True)
    loss = model(**inputs).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    lengths = packed["sample_lengths"].tolist()
    bounds = [0] + torch.cumsum(torch.tensor(lengths), 0).tolist()
    layers = model.config.text_config.num_hidden_layers
    calls = reference_flash_attention_2.varlen_calls
    assert len(calls) == layers  # every LLM layer, forward (backward goes through autograd of the reference)
    for call in calls:
        assert call["cu_seqlens_q"] == call["cu_seqlens_k"] == bounds and call["dtype"] == torch.int32
        assert call["max_seqlen_q"] == call["max_seqlen_k"] == max(lengths)
        assert call["causal"] is True and call["tokens"] == sum(lengths)
    # the vision tower (no padding, no position ids) runs flash-attn's dense kernel, bidirectionally
    assert reference_flash_attention_2.dense_calls and not any(c["causal"] for c in reference_flash_attention_2.dense_calls)

    assert float(loss.detach()) == pytest.approx(float(loss_padded), abs=1e-5)
    assert grads.keys() == grads_padded.keys()
    assert max(float((grads[n] - grads_padded[n]).abs().max()) for n in grads_padded) <= 1e-5


def test_flash_attention_2_plumbing_padded_rows_unpad_with_the_attention_mask(ws, reference_flash_attention_2):
    """Unpacked (padded) micro batches under flash_attention_2: transformers unpads them from the attention mask
    (varlen kernel, one sequence per row, padding excluded) and the loss is the sdpa loss."""
    from mmzoo.models.load import load_model

    data = _data(ws)
    indices = _variable_lengths(data)
    padded = data.batch(indices)
    torch.manual_seed(0)
    loss_sdpa, _ = _loss_and_grads(load_model(ws.hf, attn_implementation="sdpa").float().train(), padded)
    model = _with_flash_attention_2(load_model(ws.hf, attn_implementation="sdpa").float().train())
    loss_flash, _ = _loss_and_grads(model, padded)
    real = padded["attention_mask"].sum(1).tolist()
    call = reference_flash_attention_2.varlen_calls[0]
    assert call["cu_seqlens_q"] == [0] + torch.cumsum(torch.tensor(real), 0).tolist()
    assert float(loss_flash) == pytest.approx(float(loss_sdpa), abs=1e-5)
