"""Training throughput, MFU and peak memory of `mmzoo train`, optionally side by side with a bare PyTorch loop.

Builds a LLaVA model of the requested size (CLIP vision + Llama LLM, random weights) with a tokenizer —
mmzoo's tiny BPE one, or a real one (``--tokenizer DIR``: e.g. Llama-2/Vicuna's 32 000 or Qwen2's 151 646
tokens, see benchmarks/real_vocab.py) — preprocesses a synthetic caption set with `mmzoo preprocess`, and
trains ``--steps`` steps in this process with mmzoo's training loop (DeepSpeed engine, ``mmzoo.train.loop``).

``--compare-bare`` then trains the same model (same weights, same trainable set) on the same micro batches,
on the same device, with a plain PyTorch loop: fp32 master weights + autocast in ``--precision``,
``torch.optim.AdamW(fused=True)`` on CUDA, gradient clipping at 1.0, no DeepSpeed. Both are timed over the
steps after ``--warmup-steps`` and the script prints the mmzoo/bare ratio of tokens/s.

Tokens/s count real tokens only (no padding). MFU = model FLOP/s / peak FLOP/s. Model FLOPs are the closed
form of mmzoo.train.flops — every matrix product of forward and backward for the stage's trainable set (a
frozen vision tower runs forward only), attention's QKᵀ and AV included (within each sample for packed
batches), recomputation excluded (PaLM, appendix B) — which tests/train/test_flops.py checks against torch's
FlopCounterMode. ``--peak-tflops``: the device's dense peak for the precision; by default the datasheet
value for known GPUs (H100/H200 SXM: 989 bf16/fp16, 67 fp32; A100: 312 / 19.5), else a measured matmul.

Sample lengths (``--lengths``): ``fixed`` (every caption ``--caption-words`` words) or ``llava665k``, a
synthetic stand-in for LLaVA-1.5's 665k instruction mix (the real file is not available offline, so this
is a model of it, not a measurement): 94 % of samples carry one image (its image tokens, 576 at 336 px)
plus text of log-normal length (median 130 tokens, σ 0.85 — short VQA answers to long multi-turn
conversations), 6 % are text-only (ShareGPT-like: median 500 tokens, σ 0.9); every sample is cut at 2048
tokens. ``--length-scale`` shrinks the text lengths for small presets (the tiny preset on CPU).

  python benchmarks/train_bench.py --preset tiny --lengths llava665k --length-scale 0.05 --compare-bare   # CPU
  python benchmarks/train_bench.py --preset 1b --tokenizer vocab/llama-2 --lengths llava665k --precision bf16 \\
      --micro-batch-size 16 --compare-bare                                                          # one GPU
  python benchmarks/train_bench.py ... --packing --max-tokens 12288        # padding-free packed micro batches
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

PRESETS = {
    # name: (text hidden, layers, heads, kv heads, intermediate, vision hidden, vision layers, image size, patch)
    "tiny": (64, 2, 4, 2, 96, 32, 2, 32, 8),
    "small": (256, 4, 8, 4, 688, 128, 2, 64, 16),
    "1b": (2048, 16, 32, 8, 5632, 1024, 24, 336, 14),
}
DATASHEET_TFLOPS = {  # dense peak, (bf16/fp16, fp32) — NVIDIA datasheets, SXM parts
    "H200": (989.0, 67.0), "H100": (989.0, 67.0), "A100": (312.0, 19.5),
}
# common English words that are one token in the Llama-2, Qwen2 and tiny tokenizers alike (lengths ≈ words)
WORDS = "a photo of the cat sitting on red sofa next to window two dogs play in park and man with hat".split()
MAX_SEQ = 2048


def make_tokenizer(path: Path | None):
    """The tiny BPE tokenizer, or a real one from ``path`` with ``<image>`` added and a pad token set."""
    from mmzoo.demo.tiny import CHAT_TEMPLATE, IMAGE_TOKEN
    from mmzoo.demo.tiny import make_tokenizer as tiny_tokenizer

    if path is None:
        return tiny_tokenizer()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tok.pad_token is None:  # LLaVA's recipe: pad = unk (Llama-2 has no pad token)
        tok.pad_token = tok.unk_token or tok.eos_token
    if not getattr(tok, "chat_template", None):
        tok.chat_template = CHAT_TEMPLATE
    return tok


def build(out: Path, preset: str, tokenizer_path: Path | None, dtype: str) -> None:
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    from mmzoo.demo.tiny import CHAT_TEMPLATE, IMAGE_TOKEN, image_processor, text_config, vision_config

    h, layers, heads, kv, inter, vh, vl, size, patch = PRESETS[preset]
    tok = make_tokenizer(tokenizer_path)
    ids = {k: getattr(tok, f"{k}_token_id") for k in ("bos", "eos", "pad")}
    tcfg = text_config("llama", vocab_size=len(tok), hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=kv, intermediate_size=inter, max_position_embeddings=4096,
                       **{f"{k}_token_id": v for k, v in ids.items() if v is not None})
    vcfg = vision_config("clip", hidden_size=vh, num_hidden_layers=vl, num_attention_heads=max(1, vh // 64),
                         intermediate_size=vh * 4, image_size=size, patch_size=patch)
    config = LlavaConfig(vision_config=vcfg, text_config=tcfg, image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
                         vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=(size // patch) ** 2)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # initialising 1-2 B parameters on 16 CPU cores takes ~40 s
    with torch.device(device):
        model = LlavaForConditionalGeneration(config)
    model.to({"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]).save_pretrained(out)
    del model
    LlavaProcessor(image_processor=image_processor("clip", size), tokenizer=tok, patch_size=patch,
                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                   chat_template=getattr(tok, "chat_template", None) or CHAT_TEMPLATE).save_pretrained(out)


def text_lengths(kind: str, n: int, image_tokens: int, scale: float, caption_words: int, seed: int = 0):
    """Per sample: (has an image, text tokens) — see the module docstring for the llava665k model."""
    import numpy as np

    if kind == "fixed":
        return [(True, caption_words)] * n
    rng = np.random.default_rng(seed)
    with_image = rng.random(n) < 0.94
    text = np.where(with_image, rng.lognormal(math.log(130), 0.85, n), rng.lognormal(math.log(500), 0.9, n)) * scale
    limit = np.where(with_image, MAX_SEQ * scale - image_tokens, MAX_SEQ * scale)  # cut at 2048 (scaled) tokens
    text = np.clip(np.rint(text), 4, np.maximum(limit - 8, 4)).astype(int)
    return [(bool(i), int(t)) for i, t in zip(with_image, text)]


def make_data(work: Path, model: Path, args, image_tokens: int) -> Path:
    from mmzoo.preprocess import preprocess
    from mmzoo.demo.tiny import make_images

    size = PRESETS[args.preset][7]
    make_images(work / "images", 8, size=size)
    rows = []
    for i, (image, words) in enumerate(text_lengths(args.lengths, args.samples, image_tokens, args.length_scale,
                                                   args.caption_words)):
        caption = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(words))
        human = "<image>" if image else "describe"
        row = {"id": str(i), "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": caption}]}
        if image:
            row["image"] = f"img_{i % 8:03d}.png"
        rows.append(row)
    (work / "data.json").write_text(json.dumps(rows))
    data = work / f"data-{model.name}-{args.lengths}-{args.length_scale}-{args.samples}"
    preprocess([work / "data.json"], work / "images", model, data, template="plain", model=model, max_seq_len=4096,
               overwrite=True)
    return data


def peak_tflops(precision: str, given: float | None) -> tuple[float, str]:
    import torch

    if given:
        return given, "given"
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, (half, single) in DATASHEET_TFLOPS.items():
            if key in name:
                return (single if precision == "fp32" else half), f"datasheet ({name})"
    return measured_peak_tflops(precision), "measured (matmul)"


def measured_peak_tflops(precision: str, n: int = 2048, repeats: int = 5) -> float:
    """Best-of-N dense matmul TFLOP/s on this device (a practical peak for CPUs without a datasheet)."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    best = float("inf")
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        a @ b
        _sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _reset_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def train_config(args, model: Path, data: Path, work: Path):
    from mmzoo.train.config import load_config

    train = {"max_steps": args.steps, "micro_batch_size": args.micro_batch_size,
             "global_batch_size": args.micro_batch_size * args.accumulation,
             "precision": args.precision, "attn_implementation": args.attn, "save_every": args.save_every or 10**9,
             "warmup_ratio": 0.0, "async_checkpoint": args.async_checkpoint,
             "keep_checkpoints": 1,  # the 1b preset's checkpoint is 16 GB: keep disk use to one (two while saving)
             "lr_scheduler": "constant", "lr": 1e-5, "log_every": args.log_every, "cross_entropy": args.cross_entropy,
             "liger_kernels": args.liger_kernels, "compile": args.compile}
    if args.packing:
        train.update(packing=True, max_tokens=args.max_tokens)
    return load_config(data={
        "stage": args.stage, "model": str(model), "data": {"path": str(data), "images": str(work / "images"),
                                                          "num_workers": args.num_workers},
        "train": train, "deepspeed": {"zero_stage": args.zero_stage, "overrides": args.deepspeed_overrides},
        "output_dir": str(work / f"run-{time.time_ns()}"),
    })


def run_mmzoo(cfg, warmup: int, profile: Path | None = None, profile_steps: int = 2, engine_tuning: bool = True,
              final_checkpoint: bool = True) -> dict:
    import mmzoo.train.engine_tuning as tuning
    import mmzoo.train.saving as saving
    from mmzoo.train.loop import run_training

    _reset_memory()
    tune, save = tuning.tune_engine, saving.CheckpointSaver.save
    if not engine_tuning:  # DeepSpeed's engine as it comes, to measure what mmzoo.train.engine_tuning saves
        tuning.tune_engine = lambda engine, world: []
    if not final_checkpoint:  # the 1b preset's end-of-run save takes ~12 s of a GPU session and no timed step

        def save_unless_last(self, step: int, *, last: bool = False) -> None:
            if not last or step % cfg.train.save_every == 0:
                save(self, step, last=last)

        saving.CheckpointSaver.save = save_unless_last
    try:
        with StepProfiler(profile, warmup, profile_steps) as profiler:
            summary = run_training(cfg)
    finally:
        tuning.tune_engine, saving.CheckpointSaver.save = tune, save
    rows = [json.loads(line) for line in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    import shutil

    shutil.rmtree(cfg.output_dir, ignore_errors=True)  # its final checkpoint: 11 GB for the 1b preset
    # a row covers the steps since the previous one (train.log_every, and every save): its `seconds` are per step,
    # its tokens/s and TFLOP/s the window's
    spans = [(r, r["step"] - previous) for r, previous in zip(rows, [0] + [r["step"] for r in rows[:-1]])]
    timed = [(r, n) for r, n in spans if r["step"] > warmup] or spans
    seconds = sum(r["seconds"] * n for r, n in timed)
    tokens = sum(r["tokens"] if n == 1 else r["tokens_per_s"] * r["seconds"] * n for r, n in timed)  # "tokens": the last step's
    flops = sum((r["tflops"] or 0) * r["seconds"] * n for r, n in timed) * 1e12
    steps = sum(n for _, n in timed)
    result = {"tokens_per_s": tokens / seconds, "tflops": flops / seconds / 1e12 if flops else None,
              "tokens_per_step": tokens / steps, "peak_memory_gib": _peak_gib(), "final_loss": summary["last"]["loss"],
              "step_seconds": seconds / steps, "text_attention": summary["text_attention"],
              # checkpoints: saves, seconds the training loop waited for them, seconds the background writer wrote
              "checkpoint": summary.get("checkpoint"), "engine_tuning": summary.get("engine_tuning")}
    if profiler.summary is not None:
        result["profile"] = profiler.summary
    return result


class StepProfiler:
    """torch.profiler over ``steps`` training steps of mmzoo's loop after ``warmup`` (``--profile``): where a step's
    time goes — the operators by their own device time (CPU time without a GPU), and how busy the device was over
    the profiled steps' wall clock (a busy share well under 1 means the GPU waits for the host: launches, copies,
    synchronisation). It wraps the loop's step function, so the rest of the loop runs as always; the profiled
    steps are slower than the others, so a profiled run's throughput is not for comparison."""

    def __init__(self, path: Path | None, warmup: int, steps: int):
        self.path, self.warmup, self.steps = path, warmup, steps
        self.summary: dict | None = None

    def __enter__(self):
        if self.path is None:
            return self
        import torch
        from torch.profiler import ProfilerActivity, profile, schedule

        import mmzoo.train.loop as loop

        self.cuda = torch.cuda.is_available()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        self.profiler = profile(activities=activities, schedule=schedule(wait=self.warmup, warmup=0, active=self.steps,
                                                                        repeat=1))
        self.marks: list[float] = []
        self.loop, self.original = loop, loop._train_step
        done = 0

        def profiled_step(*args, **kwargs):
            nonlocal done
            if done == self.warmup:
                _sync()
                self.marks.append(time.perf_counter())
            out = self.original(*args, **kwargs)
            done += 1
            if done == self.warmup + self.steps:
                _sync()
                self.marks.append(time.perf_counter())
            self.profiler.step()
            return out

        self.profiler.start()
        loop._train_step = profiled_step
        return self

    def __exit__(self, *exc):
        if self.path is None:
            return False
        self.loop._train_step = self.original
        self.profiler.stop()
        if exc[0] is None and len(self.marks) == 2:
            self.summary = self.write()
        return False

    def write(self) -> dict:
        from torch.autograd import DeviceType

        events = self.profiler.key_averages()
        wall_us = (self.marks[1] - self.marks[0]) * 1e6
        if self.cuda:  # the kernels themselves (device-side events): their time is the device's busy time; torch
            # mirrors user annotations (ProfilerStep#N) on the device's timeline too, spanning whole steps: left out
            kernels = [e for e in events if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
                       and not e.key.startswith("ProfilerStep")]
            busy_us = sum(e.self_device_time_total for e in kernels)
            own, sort_by = (lambda e: e.self_device_time_total), "self_device_time_total"
        else:
            kernels, busy_us = [], None
            own, sort_by = (lambda e: e.self_cpu_time_total), "self_cpu_time_total"
        head = (f"{self.steps} profiled step(s) after {self.warmup}: {wall_us / 1e6:.3f} s wall clock"
                + (f", device busy {busy_us / 1e6:.3f} s ({busy_us / wall_us:.1%})" if self.cuda else " (CPU)"))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(head + "\n\n" + events.table(sort_by=sort_by, row_limit=40, max_name_column_width=70) + "\n")
        operators = sorted((e for e in events if e.device_type != DeviceType.CUDA), key=own, reverse=True)
        return {"file": str(self.path), "steps": self.steps, "wall_seconds": round(wall_us / 1e6, 4),
                "device_busy": round(busy_us / wall_us, 4) if self.cuda else None,
                "top_operators": [{"name": e.key, "self_ms": round(own(e) / 1e3, 3), "calls": e.count}
                                  for e in operators[:10]],
                "top_kernels": [{"name": e.key[:120], "self_ms": round(own(e) / 1e3, 3), "calls": e.count}
                                for e in sorted(kernels, key=own, reverse=True)[:10]]}


def run_bare(cfg, warmup: int, accumulation: int = 1) -> dict:
    """The same model, trainable set and micro batches through a plain PyTorch loop (no DeepSpeed); ``accumulation``
    micro batches an optimizer step, each loss divided by it (as DeepSpeed does)."""
    import torch

    from mmzoo.converters.pipeline import read_checkpoint
    from mmzoo.models.load import load_model
    from mmzoo.train.data import TrainData, micro_batch_stream
    from mmzoo.train.flops import StepFlopsCounter
    from mmzoo.train.loop import batch_tokens
    from mmzoo.train.names import memory_layout
    from mmzoo.train.packing import PackPlan
    from mmzoo.train.stages import select_trainable

    _reset_memory()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.train.seed)
    model = load_model(cfg.model, attn_implementation=cfg.train.attn_implementation).float().to(device).train()
    names = [n for n, _ in model.named_parameters()]
    verdict = select_trainable(names, memory_layout(read_checkpoint(cfg.model)), cfg.stage, cfg.train.freeze,
                               cfg.train.train_only)
    for name, param in model.named_parameters():
        param.requires_grad_(verdict[name])
    trainable = [p for p in model.parameters() if p.requires_grad]
    attention = cfg.train.attn_implementation
    if cfg.train.packing:  # the same attention kernel as mmzoo's run (varlen flash attention on a GPU)
        from mmzoo.train.packing import select_packed_attention

        attention = select_packed_attention(model, accelerator=device.type, precision=cfg.train.precision)
    groups = [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": cfg.train.weight_decay},
              {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=tuple(cfg.train.adam_betas),
                                  eps=cfg.train.adam_eps, **({"fused": True} if device.type == "cuda" else {}))
    data = TrainData(cfg.data.path, cfg.data.images, cfg.model, cfg.train.seed)
    plan = PackPlan(data.order, data.sample_lengths(), cfg.train.max_tokens) if cfg.train.packing else None
    batches = micro_batch_stream(data, first_step=0, last_step=cfg.train.max_steps, rank=0, accumulation=accumulation, world=1,
                                 micro_batch_size=cfg.train.micro_batch_size, num_workers=cfg.data.num_workers,
                                 pin_memory=device.type == "cuda", plan=plan)
    flops = StepFlopsCounter(model)
    autocast = cfg.train.precision != "fp32"
    half = {"bf16": torch.bfloat16, "fp16": torch.bfloat16, "fp32": torch.float32}[cfg.train.precision]
    tokens = total_flops = 0
    loss = None
    for step in range(cfg.train.max_steps):
        if step == warmup:
            _sync()
            started, tokens, total_flops = time.perf_counter(), 0, 0
        for _ in range(accumulation):
            cpu = next(batches)
            tokens += batch_tokens(cpu)
            total_flops += flops.micro_batch(cpu)
            pixels = cpu.get("pixel_values")
            batch = {k: cpu[k].to(device, non_blocking=True)
                     for k in ("input_ids", "attention_mask", "labels", "position_ids") if cpu.get(k) is not None}
            if pixels is not None:
                batch["pixel_values"] = pixels.to(device, non_blocking=True)
            if "position_ids" in batch:
                batch["use_cache"] = False  # packed: transformers reads the samples from position_ids without a cache
            with torch.autocast(device.type, dtype=half, enabled=autocast):
                loss = model(**batch).loss
            (loss / accumulation).backward()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _sync()
    seconds = time.perf_counter() - started
    timed = cfg.train.max_steps - warmup
    result = {"tokens_per_s": tokens / seconds, "tflops": total_flops / seconds / 1e12 if flops.supported else None,
              "tokens_per_step": tokens / timed, "text_attention": attention, "peak_memory_gib": _peak_gib(), "final_loss": float(loss.detach()),
              "step_seconds": seconds / timed}
    del model, optimizer, batches
    _reset_memory()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--tokenizer", type=Path, default=None, help="a real tokenizer folder (default: the tiny BPE one)")
    parser.add_argument("--lengths", choices=["fixed", "llava665k"], default="fixed")
    parser.add_argument("--length-scale", type=float, default=1.0, help="text lengths × this (llava665k; small presets)")
    parser.add_argument("--caption-words", type=int, default=60, help="caption words a sample (--lengths fixed)")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup-steps", type=int, default=2, help="steps left out of the timing")
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--accumulation", type=int, default=1,
                        help="micro batches (packs with --packing) an optimizer step: train.global_batch_size = "
                             "micro batch × this")
    parser.add_argument("--packing", action="store_true", help="train.packing (padding-free micro batches)")
    parser.add_argument("--max-tokens", type=int, default=None, help="train.max_tokens (default: micro batch × mean length)")
    parser.add_argument("--cross-entropy", choices=["plain", "chunked", "liger"], default="plain")
    parser.add_argument("--liger-kernels", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--stage", choices=["pretrain", "sft"], default="sft")
    parser.add_argument("--zero-stage", type=int, default=0, help="0: one process (ZeRO-1/2 only add copies there)")
    parser.add_argument("--save-every", type=int, default=None,
                        help="train.save_every (default: only the end-of-run checkpoint); the saves inside the timed "
                             "steps count in tokens/s")
    parser.add_argument("--async-checkpoint", choices=["auto", "true", "false"], default="auto",
                        help="train.async_checkpoint (auto: on a GPU)")
    parser.add_argument("--deepspeed-overrides", type=json.loads, default={}, metavar="JSON",
                        help="deepspeed.overrides, e.g. '{\"data_types\": {\"grad_accum_dtype\": \"fp32\"}}' with "
                             "--zero-stage 1 (DeepSpeed's BF16_Optimizer: flat fp32 master weights and gradients)")
    parser.add_argument("--no-engine-tuning", action="store_true",
                        help="leave DeepSpeed's engine as it comes (mmzoo.train.engine_tuning off), for comparison")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--num-workers", type=int, default=2, help="data.num_workers (batches prepared ahead)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="device peak dense TFLOP/s for --precision (default: datasheet for known GPUs, else measured)")
    parser.add_argument("--compare-bare", action="store_true", help="also train with a bare PyTorch loop and print the ratio")
    parser.add_argument("--skip-mmzoo", action="store_true", help="only the bare loop (with --compare-bare)")
    parser.add_argument("--workdir", type=Path, default=None, help="reuse the model and data built here")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    parser.add_argument("--log-every", type=int, default=1,
                        help="train.log_every: steps between metrics lines (each one waits for the device); "
                             "--warmup-steps must be a multiple of it")
    parser.add_argument("--profile", type=Path, default=None,
                        help="profile --profile-steps of mmzoo's steps after the warmup with torch.profiler and write "
                             "the operators by their own device time (CPU time without a GPU) and the device's busy "
                             "share to this file (those steps run slower: not a run for throughput figures)")
    parser.add_argument("--profile-steps", type=int, default=2)
    parser.add_argument("--no-final-checkpoint", action="store_true",
                        help="skip mmzoo's end-of-run save (not timed; ~12 s for the 1b preset on an H200)")
    args = parser.parse_args(argv)
    args.async_checkpoint = {"true": True, "false": False}.get(args.async_checkpoint, args.async_checkpoint)
    if args.accumulation < 1:
        parser.error("--accumulation must be at least 1")
    if args.steps <= args.warmup_steps:
        parser.error("--steps must be larger than --warmup-steps")
    if args.log_every < 1 or args.warmup_steps % args.log_every:
        parser.error("--warmup-steps must be a multiple of --log-every (the timing starts at a metrics line)")
    if args.profile and args.warmup_steps + args.profile_steps > args.steps:
        parser.error("--profile needs --steps ≥ --warmup-steps + --profile-steps")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    work = args.workdir or Path(tempfile.mkdtemp(prefix="mmzoo-train-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    vocab = args.tokenizer.name if args.tokenizer else "tiny"
    model = work / f"model-{args.preset}-{vocab}"
    if not model.exists():
        t0 = time.perf_counter()
        build(model, args.preset, args.tokenizer, "bf16" if args.precision == "bf16" else "fp32")
        print(f"built {model.name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    size, patch = PRESETS[args.preset][7], PRESETS[args.preset][8]
    data = make_data(work, model, args, (size // patch) ** 2)

    from mmzoo.train.data import TrainData

    lengths = TrainData(data, work / "images", model, 0).sample_lengths()
    if args.packing and args.max_tokens is None:
        args.max_tokens = max(int(lengths.max()), int(round(args.micro_batch_size * lengths.mean())))
    cfg = train_config(args, model, data, work)
    runs = {}
    if args.compare_bare:  # first: it frees all it held, while a finished DeepSpeed engine may keep some memory
        runs["bare"] = run_bare(cfg, args.warmup_steps, args.accumulation)
    if not args.skip_mmzoo:
        runs["mmzoo"] = run_mmzoo(cfg, args.warmup_steps, args.profile, args.profile_steps, not args.no_engine_tuning,
                                  not args.no_final_checkpoint)
    peak, peak_source = peak_tflops(args.precision, args.peak_tflops)

    from transformers import LlavaConfig, LlavaForConditionalGeneration

    with torch.device("meta"):
        meta = LlavaForConditionalGeneration(LlavaConfig.from_pretrained(model))
    result = {
        "preset": args.preset, "parameters": sum(p.numel() for p in meta.parameters()),
        "vocabulary": meta.config.text_config.vocab_size, "tokenizer": vocab,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__, "precision": args.precision, "attn": args.attn, "zero_stage": args.zero_stage,
        "deepspeed_overrides": args.deepspeed_overrides, "stage": args.stage, "log_every": args.log_every, "micro_batch_size": None if args.packing else args.micro_batch_size,
        "accumulation": args.accumulation,
        "packing": args.packing, "max_tokens": args.max_tokens, "cross_entropy": args.cross_entropy,
        "liger_kernels": args.liger_kernels, "compile": args.compile, "lengths": args.lengths,
        "save_every": args.save_every, "async_checkpoint": args.async_checkpoint,
        "sample_tokens": {"mean": round(float(lengths.mean()), 1), "min": int(lengths.min()), "max": int(lengths.max())},
        "steps": args.steps, "warmup_steps": args.warmup_steps, "peak_tflops": round(peak, 3), "peak_source": peak_source,
        "torch_threads": torch.get_num_threads(),
    }
    for name, run in runs.items():
        run = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in run.items()}
        run["mfu"] = round(run["tflops"] / peak, 4) if run.get("tflops") else None
        result[name] = run
    if "mmzoo" in runs and "bare" in runs:
        result["mmzoo_over_bare"] = round(runs["mmzoo"]["tokens_per_s"] / runs["bare"]["tokens_per_s"], 3)
    print(json.dumps(result, indent=2))
    for name in sorted(runs, reverse=True):  # mmzoo first
        r = result[name]
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") else "–"
        mem = f"{r['peak_memory_gib']} GiB" if r.get("peak_memory_gib") is not None else "– (CPU)"
        print(f"{name:>5}: {r['tokens_per_s']:,.0f} real tokens/s, MFU {mfu}, peak memory {mem}, "
              f"{r['tokens_per_step']:,.0f} tokens a step, final loss {r['final_loss']:.4f}")
        saved = r.get("checkpoint")
        if saved and saved["saves"]:
            kinds = (f"{saved.get('background_saves', 0)} written in the background, the last directly"
                     if saved["asynchronous"] else "synchronous writes")
            print(f"{name:>5}: {saved['saves']} checkpoint(s), {kinds}, the loop waited {saved['blocking_seconds']:.2f} s for them"
                  + (f" (the writer wrote for {saved['writing_seconds']:.2f} s)" if saved.get("writing_seconds") else ""))
    if "mmzoo_over_bare" in result:
        print(f"mmzoo/bare: {result['mmzoo_over_bare']:.3f}×")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
