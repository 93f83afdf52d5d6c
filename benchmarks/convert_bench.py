"""Conversion speed and memory against `cp -r` and the transformers route, side by side.

Builds a synthetic hf LLaVA checkpoint (random bf16 weights, CLIP-L-like vision tower + a ~1B Llama,
about 2.3 GB in ~400 MB shards), then times, each in its own process (peak RSS measured by
/usr/bin/time): `cp -r`, `mmzoo convert` hf → internal, internal → hf, hf → llava, hf → hf upcycled to 4
experts (time per output GB), and transformers
`from_pretrained` + `save_pretrained`. Also the plain-LLM route (the Llama alone, ~1.9 GB): `mmzoo convert`
to a 4-expert Mixtral, and, when `mergekit-moe` is installed (optional, never a CI dependency), mergekit-moe
building the same Mixtral (random gates, the base as every expert). Prints wall-time ratios to `cp` and
peak RSS.

    python benchmarks/convert_bench.py --workdir /tmp/mmzoo-bench [--scale 1.0] [--repeat 3] [--keep]
        [--llm-only] [--mergekit ~/.cache/mmzoo-tests/mergekit-env/bin/mergekit-moe]

mergekit is never a dependency of mmzoo: install it into a venv of its own (`python -m venv --system-site-packages
ENV && ENV/bin/pip install mergekit`) and name its `mergekit-moe` with --mergekit (default: the one on PATH).
``--llm-only`` times only the plain-LLM rows (cp, mmzoo, mergekit-moe).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def build_checkpoint(folder: Path, scale: float = 1.0) -> int:
    import torch
    from safetensors.torch import save_file

    text = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=max(1, int(14 * scale)),
                num_attention_heads=16, num_key_value_heads=16, rms_norm_eps=1e-5, model_type="llama",
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False)
    vision = dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                  num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
    config = {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava", "text_config": text,
              "vision_config": vision, "image_token_index": 31999, "projector_hidden_act": "gelu",
              "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "dtype": "bfloat16"}
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    shapes: dict[str, tuple[int, ...]] = {}
    h, i, vh, vi = text["hidden_size"], text["intermediate_size"], vision["hidden_size"], vision["intermediate_size"]
    shapes["vision_tower.embeddings.class_embedding"] = (vh,)
    shapes["vision_tower.embeddings.patch_embedding.weight"] = (vh, 3, 14, 14)
    shapes["vision_tower.embeddings.position_embedding.weight"] = ((336 // 14) ** 2 + 1, vh)
    for n in ("pre_layrnorm", "post_layernorm"):
        shapes[f"vision_tower.{n}.weight"] = shapes[f"vision_tower.{n}.bias"] = (vh,)
    for layer in range(vision["num_hidden_layers"]):
        p = f"vision_tower.encoder.layers.{layer}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[p + f"self_attn.{proj}.weight"], shapes[p + f"self_attn.{proj}.bias"] = (vh, vh), (vh,)
        for ln in ("layer_norm1", "layer_norm2"):
            shapes[p + f"{ln}.weight"] = shapes[p + f"{ln}.bias"] = (vh,)
        shapes[p + "mlp.fc1.weight"], shapes[p + "mlp.fc1.bias"] = (vi, vh), (vi,)
        shapes[p + "mlp.fc2.weight"], shapes[p + "mlp.fc2.bias"] = (vh, vi), (vh,)
    shapes["multi_modal_projector.linear_1.weight"], shapes["multi_modal_projector.linear_1.bias"] = (h, vh), (h,)
    shapes["multi_modal_projector.linear_2.weight"], shapes["multi_modal_projector.linear_2.bias"] = (h, h), (h,)
    shapes["language_model.model.embed_tokens.weight"] = shapes["language_model.lm_head.weight"] = (text["vocab_size"], h)
    shapes["language_model.model.norm.weight"] = (h,)
    for layer in range(text["num_hidden_layers"]):
        p = f"language_model.model.layers.{layer}."
        shapes[p + "input_layernorm.weight"] = shapes[p + "post_attention_layernorm.weight"] = (h,)
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[p + f"self_attn.{proj}.weight"] = (h, h)
        shapes[p + "mlp.gate_proj.weight"] = shapes[p + "mlp.up_proj.weight"] = (i, h)
        shapes[p + "mlp.down_proj.weight"] = (h, i)
    shard, shard_bytes, shards, weight_map, total = {}, 0, [], {}, 0
    gen = torch.Generator().manual_seed(0)

    def flush():
        nonlocal shard, shard_bytes
        if shard:
            shards.append(dict(shard))
            name = f"shard-{len(shards)}"
            save_file(shard, folder / f"{name}.tmp", metadata={"format": "pt"})
            for key in shard:
                weight_map[key] = name
            shard, shard_bytes = {}, 0

    for name, shape in shapes.items():
        tensor = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
        shard[name] = tensor
        shard_bytes += tensor.numel() * 2
        total += tensor.numel() * 2
        if shard_bytes >= 400_000_000:
            flush()
    flush()
    n = len(shards)
    final = {}
    for k in range(1, n + 1):
        target = f"model-{k:05d}-of-{n:05d}.safetensors"
        (folder / f"shard-{k}.tmp").rename(folder / target)
        final[f"shard-{k}"] = target
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": {k: final[v] for k, v in sorted(weight_map.items())}}, indent=2))
    return total


def extract_llm(src: Path, out: Path) -> None:
    """The Llama of the synthetic Llava as a plain causal-LM folder (one shard in memory at a time)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    config = json.loads((src / "config.json").read_text())
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({**config["text_config"], "architectures": ["LlamaForCausalLM"],
                                                 "dtype": "bfloat16"}, indent=2))
    weight_map = {}
    for shard in sorted(src.glob("*.safetensors")):
        with safe_open(shard, "pt") as f:
            tensors = {k[len("language_model."):]: f.get_tensor(k) for k in f.keys() if k.startswith("language_model.")}
        if tensors:
            save_file(tensors, out / shard.name, metadata={"format": "pt"})
            weight_map.update({k: shard.name for k in tensors})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}))


def mergekit_config(llm: Path, work: Path, experts: int) -> Path:
    """A mergekit-moe config building the same Mixtral as `mmzoo convert --moe-experts N` (random gates)."""
    path = work / "mergekit-moe.yml"
    lines = [f"base_model: {llm}", "gate_mode: random", "dtype: bfloat16", "experts_per_token: 2", "experts:"]
    lines += [f"  - source_model: {llm}" for _ in range(experts)]
    path.write_text("\n".join(lines) + "\n")
    return path


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def timed(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one command, via /usr/bin/time. Dirty pages from earlier
    runs are flushed first so no run pays for another's write-back."""
    os.sync()
    started = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "MAXRSS %M", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    rss = int([line for line in proc.stderr.splitlines() if line.startswith("MAXRSS")][-1].split()[1])
    return wall, rss


TRANSFORMERS_ROUTE = (
    "import sys, torch; from transformers import LlavaForConditionalGeneration as M;"
    "m = M.from_pretrained(sys.argv[1], dtype=torch.bfloat16); m.save_pretrained(sys.argv[2], max_shard_size='400MB')"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mmzoo-bench"))
    parser.add_argument("--scale", type=float, default=1.0, help="LLM depth multiplier (1.0 ≈ 2.3 GB).")
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="Runs per command (median wall time reported).")
    parser.add_argument("--llm-only", action="store_true", help="Only the plain-LLM rows (cp, mmzoo, mergekit-moe).")
    parser.add_argument("--tokenizer", type=Path, help="A 32 000-token Llama tokenizer folder copied into the LLM "
                        "(mergekit-moe refuses a model without one), e.g. llava-v1.5-7b's.")
    parser.add_argument("--mergekit", default=shutil.which("mergekit-moe"),
                        help="The mergekit-moe executable (default: the one on PATH; its row is skipped without one).")
    args = parser.parse_args()
    work = args.workdir
    if work.exists():
        shutil.rmtree(work)
    src = work / "src-hf"
    total = build_checkpoint(src, args.scale)
    gb = total / 1e9
    print(f"synthetic checkpoint: {gb:.2f} GB in {len(list(src.glob('*.safetensors')))} shards")
    mmzoo = [sys.executable, "-m", "mmzoo.cli"]
    def convert(source: Path, fmt: str):
        return lambda out: [*mmzoo, "convert", str(source), "-o", str(out), "--tgt-fmt", fmt, "--shard-size", "400MB"]

    # (label, command for an output folder, output folder name); run 0's internal output feeds internal → hf
    commands = [] if args.llm_only else [
        ("cp -r", lambda out: ["cp", "-r", str(src), str(out)], "cp"),
        ("mmzoo convert hf → internal", convert(src, "internal"), "internal"),
        ("mmzoo convert internal → hf", convert(work / "internal0", "hf"), "hf"),
        ("mmzoo convert hf → llava", convert(src, "llava"), "llava"),
        ("mmzoo convert hf → hf, upcycled to 4 experts (mixtral style)",
         lambda out: [*convert(src, "hf")(out), "--moe-experts", "4", "--moe-layers", "all"], "moe"),
    ]
    llm = work / "src-llm"
    extract_llm(src, llm)
    if args.tokenizer:
        for file in args.tokenizer.iterdir():
            if file.is_file() and (file.name.startswith("tokenizer") or file.name == "special_tokens_map.json"):
                shutil.copy(file, llm / file.name)
    commands += [
        ("cp -r (the LLM alone)", lambda out: ["cp", "-r", str(llm), str(out)], "llmcp"),
        ("mmzoo convert LLM → Mixtral, 4 experts", lambda out: [*convert(llm, "hf")(out), "--moe-experts", "4"], "mixtral"),
    ]
    if args.mergekit:
        config = mergekit_config(llm, work, 4)
        commands.append(("mergekit-moe LLM → Mixtral, 4 experts",
                         lambda out: [args.mergekit, str(config), str(out), "--i-understand-this-is-not-useful-without-training"],
                         "mergekit"))
    else:
        print("mergekit-moe is not installed: its row is skipped (pip install mergekit to compare)")
    timed(["cp", "-r", str(src), str(work / "warm")])  # warm the page cache so every run reads from memory
    shutil.rmtree(work / "warm")
    samples: dict[str, list[tuple[float, int]]] = {label: [] for label, _, _ in commands}
    output_bytes: dict[str, int] = {}
    for i in range(args.repeat):  # interleaved, so background noise hits every command alike
        for label, make, name in commands:
            out = work / f"{name}{i}"
            samples[label].append(timed(make(out)))
            output_bytes[label] = folder_bytes(out)
            if i > 0:
                shutil.rmtree(out)
    runs = [(label, statistics.median(w for w, _ in s), max(r for _, r in s), output_bytes[label]) for label, s in samples.items()]
    if not (args.skip_transformers or args.llm_only):
        label = "transformers from_pretrained + save_pretrained"
        runs.append((label, *timed([sys.executable, "-c", TRANSFORMERS_ROUTE, str(src), str(work / "tf")]), folder_bytes(work / "tf")))
    base, base_per_gb = runs[0][1], runs[0][1] / (runs[0][3] / 1e9)
    print(f"\nmedian of {args.repeat} interleaved runs; page cache warm; dirty pages synced before each run")
    print("\n| run | output GB | wall s | × cp wall | s per output GB | × cp per GB | peak RSS |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, wall, rss, nbytes in runs:
        per_gb = wall / (nbytes / 1e9)
        print(f"| {label} | {nbytes / 1e9:.2f} | {wall:.2f} | {wall / base:.2f} | {per_gb:.2f} | {per_gb / base_per_gb:.2f} | {rss / 1024:.0f} MiB |")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
