"""Training on CUDA: bf16 and fp16 (DeepSpeed loss scaling), flash-attn, NCCL across two GPUs.

Skipped where there is no CUDA device (this project's CI machines). On a GPU machine run
`python -m pytest tests/train/test_train_gpu.py -v`. Training runs in a subprocess with DS_ACCELERATOR=cuda:
DeepSpeed fixes its accelerator at import, and the CPU tests of this session have already imported it.
"""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from train_helpers import metrics, run_mmzoo

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_flash = pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="needs flash-attn (mmzoo[flash])")


def _train(ws, name: str, nproc: int = 1, **sections):
    params = ws.write(name, **sections)
    proc = run_mmzoo("train", "--params", str(params), "--nproc", str(nproc), timeout=600, accelerator="cuda")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return ws.root / "runs" / name


def _exported_logits_are_finite(run, out) -> None:
    from mmzoo.models.load import load_model
    from mmzoo.demo.tiny import sample_inputs
    from mmzoo.train.export import export

    export(run, out, tgt_fmt="hf")
    model = load_model(out).eval()
    with torch.no_grad():
        assert model(**sample_inputs(model)).logits.isfinite().all()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_training(ws, tmp_path, precision):
    run = _train(ws, f"gpu-{precision}", train={"max_steps": 8, "precision": precision, "lr": 5e-3,
                                                 "lr_scheduler": "constant", "save_every": 8})
    rows = metrics(run)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert all(math.isfinite(r["loss"]) for r in rows) and rows[-1]["loss"] < rows[0]["loss"], rows
    assert all(r["tflops"] and r["tflops"] > 0 for r in rows)
    _exported_logits_are_finite(run, tmp_path / precision)


def _tensors(obj, prefix=""):
    """Every tensor of a loaded checkpoint file by its path in the structure."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    return {k: v for key, value in items for k, v in _tensors(value, f"{prefix}/{key}").items()}


def test_async_checkpoint_on_cuda_holds_the_sync_states_and_resumes(ws):
    """train.async_checkpoint on a GPU (pinned snapshot, background write): the files hold the synchronous save's
    tensors (the synchronous files name the storages' device cuda:0, the snapshot's cpu; two GPU runs may differ in
    the last bits, hence the tolerance), and a resume from them continues the curve."""
    import shutil

    from mmzoo.train import checkpoint as ck

    sections = {"train": {"max_steps": 4, "save_every": 2, "precision": "fp32"}, "deepspeed": {"zero_stage": 0}}
    runs = {mode: _train(ws, f"gpu-ckpt-{mode}", train={**sections["train"], "async_checkpoint": mode},
                         deepspeed=sections["deepspeed"]) for mode in (False, True)}
    for path in sorted((ck.checkpoints_dir(runs[False]) / "step_0000002").glob("*.pt")):
        sync = _tensors(torch.load(path, map_location="cpu", weights_only=False))
        snap = _tensors(torch.load(ck.checkpoints_dir(runs[True]) / "step_0000002" / path.name, map_location="cpu",
                                   weights_only=False))
        assert sync.keys() == snap.keys() and sync
        for key in sync:
            assert sync[key].dtype == snap[key].dtype and sync[key].shape == snap[key].shape, key
            assert torch.allclose(sync[key].float(), snap[key].float(), atol=1e-5), key
    resumed = runs[True].with_name("gpu-ckpt-resumed")
    shutil.copytree(runs[True], resumed)
    shutil.rmtree(ck.checkpoints_dir(resumed) / "step_0000004")
    params = ws.write("gpu-ckpt-resumed", train={**sections["train"], "async_checkpoint": True},
                      deepspeed=sections["deepspeed"])
    proc = run_mmzoo("train", "--params", str(params), timeout=600, accelerator="cuda")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert [r["loss"] for r in metrics(resumed)] == pytest.approx([r["loss"] for r in metrics(runs[True])], rel=1e-4)


@needs_flash
def test_flash_attention_agrees_with_sdpa_and_trains(ws, tmp_path):
    from mmzoo.models.load import load_model
    from mmzoo.demo.tiny import sample_inputs

    logits = {}
    for attn in ("sdpa", "flash_attention_2"):
        model = load_model(ws.hf, attn_implementation=attn).to("cuda", torch.bfloat16).eval()
        inputs = {k: v.to("cuda") for k, v in sample_inputs(model).items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
        with torch.no_grad():
            logits[attn] = model(**inputs).logits.float()
    assert torch.allclose(logits["flash_attention_2"], logits["sdpa"], atol=5e-2), \
        float((logits["flash_attention_2"] - logits["sdpa"]).abs().max())
    run = _train(ws, "gpu-flash", train={"max_steps": 4, "precision": "bf16", "attn_implementation": "flash_attention_2"})
    assert all(math.isfinite(r["loss"]) for r in metrics(run))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpus_over_nccl_dense_and_moe_zero3(ws, tmp_path):
    dense = {stage: [r["loss"] for r in metrics(_train(ws, f"gpu-nccl-z{stage}", nproc=2, train={"max_steps": 3, "precision": "fp32"},
                                                        deepspeed={"zero_stage": stage}))] for stage in (0, 3)}
    assert dense[3] == pytest.approx(dense[0], rel=1e-4)
    run = _train(ws, "gpu-nccl-moe", nproc=2, stage="moe", model=str(ws.moe), train={"max_steps": 2, "precision": "bf16"},
                 deepspeed={"zero_stage": 3})
    rows = metrics(run)
    assert all(r["aux_loss"] > 0 and r["expert_load"] for r in rows)


def test_packed_batch_equals_padded_batch_on_cuda(ws):
    """Packing on the GPU path (sdpa's block-diagonal mask from position ids): the padded batch's loss."""
    from mmzoo.models.load import load_model
    from mmzoo.train.data import TrainData

    data = TrainData(ws.data, ws.images, ws.hf, seed=0)
    model = load_model(ws.hf, attn_implementation="sdpa").to("cuda").float().train()
    losses = []
    for batch in (data.batch([0, 1, 2, 3]), data.packed_batch([0, 1, 2, 3])):
        inputs = {k: batch[k].to("cuda") for k in ("input_ids", "attention_mask", "labels", "position_ids", "pixel_values")
                  if batch.get(k) is not None}
        losses.append(float(model(**inputs, use_cache=False).loss))
    assert losses[1] == pytest.approx(losses[0], abs=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is None, reason="needs liger-kernel (mmzoo[liger])")
def test_liger_kernels_match_plain_loss_and_train(ws):
    from mmzoo.models.load import load_model
    from mmzoo.train.config import load_config
    from mmzoo.train.data import TrainData
    from mmzoo.train.kernels import apply_kernels

    data = TrainData(ws.data, ws.images, ws.hf, seed=0)
    batch = data.batch([0, 1, 2, 3])
    inputs = {k: batch[k].to("cuda") for k in ("input_ids", "attention_mask", "labels", "pixel_values")}
    losses = {}
    for kind in ("plain", "liger"):
        model = load_model(ws.hf, attn_implementation="sdpa").to("cuda").float().train()
        apply_kernels(model, load_config(data=ws.config("lk", train={"cross_entropy": kind, "liger_kernels": kind == "liger"})))
        losses[kind] = float(model(**inputs).loss)
    assert losses["liger"] == pytest.approx(losses["plain"], rel=1e-4)
    run = _train(ws, "gpu-liger", train={"max_steps": 3, "precision": "bf16", "cross_entropy": "liger", "liger_kernels": True,
                                         "packing": True, "max_tokens": 256, "micro_batch_size": 2, "global_batch_size": 2},
                 deepspeed={"zero_stage": 0})
    assert all(math.isfinite(r["loss"]) for r in metrics(run))


def test_varlen_flash_attention_for_packed_rows_matches_padded(ws):
    """bf16 on CUDA: packed rows go through torch's varlen flash kernel and give the padded batch's loss."""
    from mmzoo.models.load import load_model
    from mmzoo.train import packing
    from mmzoo.train.data import TrainData

    if packing._varlen_attn() is None:
        pytest.skip("this torch has no torch.nn.attention.varlen")
    data = TrainData(ws.data, ws.images, ws.hf, seed=0)
    model = load_model(ws.hf, attn_implementation="sdpa").to("cuda", torch.bfloat16).train()
    padded = data.batch([0, 1, 2, 3])
    inputs = {k: padded[k].to("cuda") for k in ("input_ids", "attention_mask", "labels")}
    reference = float(model(**inputs, pixel_values=padded["pixel_values"].to("cuda", torch.bfloat16)).loss)
    assert packing.select_packed_attention(model, accelerator="cuda", precision="bf16") == packing.VARLEN
    packed = data.packed_batch([0, 1, 2, 3])
    inputs = {k: packed[k].to("cuda") for k in ("input_ids", "labels", "position_ids")}
    loss = model(**inputs, pixel_values=packed["pixel_values"].to("cuda", torch.bfloat16), use_cache=False).loss
    loss.backward()
    assert float(loss) == pytest.approx(reference, rel=2e-2)
    assert all(p.grad is None or p.grad.isfinite().all() for p in model.parameters())
