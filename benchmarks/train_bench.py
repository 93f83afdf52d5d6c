"""Training throughput and MFU of `mmzoo train` (single process, in process; DeepSpeed engine).

Builds a LLaVA model of the requested size (CLIP vision + Llama LLM, random weights, real BPE tokenizer),
preprocesses a synthetic caption set with `mmzoo preprocess`, trains ``--steps`` steps with the given
stage / ZeRO stage / precision, and reports tokens/s and model TFLOP/s (medians over the steps after the
first, as `metrics.jsonl` logs them) and MFU = model FLOP/s / peak FLOP/s. Model FLOPs are the closed form
of mmzoo.train.flops — every matrix product of forward and backward for the stage's trainable set (a frozen
vision tower runs forward only), attention's QKᵀ and AV included, recomputation excluded (PaLM, appendix B) —
which tests/train/test_flops.py checks against torch's FlopCounterMode. ``--peak-tflops`` is the device's
dense peak for the precision used (H100 SXM bf16: 989; 0 = measure a large matmul here, for CPUs).

  python benchmarks/train_bench.py --preset tiny --steps 6 --peak-tflops 0.2            # CPU, minutes
  python benchmarks/train_bench.py --preset 1b --precision bf16 --attn flash_attention_2 --peak-tflops 989  # GPU
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
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


def build(out: Path, preset: str) -> None:
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    from mmzoo.tiny import CHAT_TEMPLATE, IMAGE_TOKEN, image_processor, make_tokenizer, text_config, vision_config

    h, layers, heads, kv, inter, vh, vl, size, patch = PRESETS[preset]
    tok = make_tokenizer()
    tcfg = text_config("llama", vocab_size=len(tok), hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=kv, intermediate_size=inter, max_position_embeddings=4096)
    vcfg = vision_config("clip", hidden_size=vh, num_hidden_layers=vl, num_attention_heads=max(1, vh // 64),
                         intermediate_size=vh * 4, image_size=size, patch_size=patch)
    config = LlavaConfig(vision_config=vcfg, text_config=tcfg, image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
                         vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=(size // patch) ** 2)
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(out)
    LlavaProcessor(image_processor=image_processor("clip", size), tokenizer=tok, patch_size=patch,
                   vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE).save_pretrained(out)


def measured_peak_tflops(precision: str, n: int = 2048, repeats: int = 5) -> float:
    """Best-of-N dense matmul TFLOP/s on this device (a practical peak for CPUs without a datasheet)."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--caption-words", type=int, default=60)
    parser.add_argument("--stage", choices=["pretrain", "sft"], default="sft")
    parser.add_argument("--zero-stage", type=int, default=2)
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--num-workers", type=int, default=2, help="data.num_workers (batches prepared ahead)")
    parser.add_argument("--peak-tflops", type=float, required=True,
                        help="device peak dense TFLOP/s for --precision; 0 = measure a large matmul here (CPU)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    from mmzoo.preprocess import preprocess
    from mmzoo.tiny import make_images
    from mmzoo.train.config import load_config
    from mmzoo.train.loop import run_training

    work = args.workdir or Path(tempfile.mkdtemp(prefix="mmzoo-train-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    model = work / f"model-{args.preset}"
    if not model.exists():
        build(model, args.preset)
    size = PRESETS[args.preset][7]
    make_images(work / "images", 8, size=size)
    words = "a photo of a cat sitting on a red sofa next to a window two dogs play in the park".split()
    rows = [{"id": str(i), "image": f"img_{i % 8:03d}.png", "conversations": [
        {"from": "human", "value": "<image>"}, {"from": "gpt", "value": " ".join(words[(i + j) % len(words)] for j in range(args.caption_words))}]}
        for i in range(args.samples)]
    (work / "data.json").write_text(json.dumps(rows))
    preprocess([work / "data.json"], work / "images", model, work / "data", template="plain", model=model, max_seq_len=4096, overwrite=True)
    cfg = load_config(data={
        "stage": args.stage, "model": str(model), "data": {"path": str(work / "data"), "images": str(work / "images"), "num_workers": args.num_workers},
        "train": {"max_steps": args.steps, "micro_batch_size": args.micro_batch_size, "global_batch_size": args.micro_batch_size,
                  "precision": args.precision, "attn_implementation": args.attn, "save_every": 10**9, "warmup_ratio": 0.0},
        "deepspeed": {"zero_stage": args.zero_stage}, "output_dir": str(work / f"run-{time.time_ns()}"),
    })
    summary = run_training(cfg)
    rows = [json.loads(line) for line in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    timed = rows[1:] if len(rows) > 1 else rows
    tokens_per_s = statistics.median(r["tokens_per_s"] for r in timed)
    tflops = statistics.median(r["tflops"] for r in timed)
    seq = statistics.mean(r["tokens"] for r in timed) / args.micro_batch_size

    from transformers import LlavaConfig, LlavaForConditionalGeneration

    with torch.device("meta"):
        meta = LlavaForConditionalGeneration(LlavaConfig.from_pretrained(model))
    n_vision = sum(p.numel() for n, p in meta.named_parameters() if "vision_tower" in n)
    n_llm = sum(p.numel() for n, p in meta.named_parameters() if "vision_tower" not in n)
    peak_source = "given"
    if args.peak_tflops <= 0:
        args.peak_tflops, peak_source = measured_peak_tflops(args.precision), "measured (matmul)"
    mfu = tflops / args.peak_tflops
    result = {
        "preset": args.preset, "parameters": n_llm + n_vision, "device": "cuda" if torch.cuda.is_available() else "cpu",
        "precision": args.precision, "attn": args.attn, "zero_stage": args.zero_stage, "stage": args.stage,
        "micro_batch_size": args.micro_batch_size, "num_workers": args.num_workers, "seq_len": round(seq, 1), "steps": args.steps,
        "tokens_per_s": round(tokens_per_s, 1), "model_flops_per_token": int(tflops * 1e12 / tokens_per_s),
        "achieved_tflops": round(tflops, 4), "peak_tflops": round(args.peak_tflops, 4), "peak_source": peak_source,
        "mfu": round(mfu, 4), "final_loss": round(summary["last"]["loss"], 4), "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
