"""benchmarks/train_bench.py runs on CPU with the tiny preset: mmzoo and the bare PyTorch loop train the same
model on the same batches (the same losses in fp32), and the ratio, real tokens/s and MFU are reported."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "train_bench.py"


def _bench():
    spec = importlib.util.spec_from_file_location("train_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_train_bench_compares_mmzoo_with_a_bare_loop_on_cpu(tmp_path, capsys, packing):
    bench = _bench()
    out = tmp_path / "result.json"
    args = ["--preset", "tiny", "--lengths", "llava665k", "--length-scale", "0.05", "--samples", "24", "--steps", "3",
            "--warmup-steps", "1", "--micro-batch-size", "4", "--num-workers", "0", "--compare-bare",
            "--workdir", str(tmp_path / "work"), "--json", str(out), "--save-every", "2",
            "--async-checkpoint", "false" if packing else "true"] + (["--packing"] if packing else [])
    assert bench.main(args) == 0
    result = json.loads(out.read_text())
    mmzoo, bare = result["mmzoo"], result["bare"]
    assert result["mmzoo_over_bare"] == pytest.approx(mmzoo["tokens_per_s"] / bare["tokens_per_s"], rel=1e-2)
    assert mmzoo["final_loss"] == pytest.approx(bare["final_loss"], rel=1e-4)  # same model, batches, fp32 numerics
    assert mmzoo["tokens_per_step"] == bare["tokens_per_step"] > 0
    assert 0 < mmzoo["mfu"] < 1 and 0 < bare["mfu"] < 1
    assert result["sample_tokens"]["min"] < result["sample_tokens"]["max"]  # variable lengths
    assert result["packing"] is packing and (result["max_tokens"] is not None) is packing
    assert mmzoo["engine_tuning"] == ["no all-reduce of the gradients over one process"]  # fp32: no overflow check
    saved = mmzoo["checkpoint"]  # steps 2 and 3 (the end), written in the background or not
    assert saved["saves"] == 2 and saved["asynchronous"] is not packing and saved["blocking_seconds"] > 0
    out = capsys.readouterr().out
    assert "mmzoo/bare:" in out and "2 checkpoint(s)" in out


def test_llava665k_lengths_are_long_tailed_and_cut():
    bench = _bench()
    lengths = bench.text_lengths("llava665k", 5000, image_tokens=576, scale=1.0, caption_words=0)
    with_image = [t for image, t in lengths if image]
    text_only = [t for image, t in lengths if not image]
    assert 0.92 < len(with_image) / len(lengths) < 0.96
    assert max(with_image) <= 2048 - 576 and max(text_only) <= 2048
    assert sorted(with_image)[len(with_image) // 2] in range(100, 170)  # median ~130 text tokens


def test_train_bench_profiles_steps_and_times_windows_of_log_every(tmp_path, capsys):
    """--profile writes where the profiled steps' time went (torch.profiler's operators); --log-every 2 makes each
    metrics line cover two steps, and the throughput still counts every timed step."""
    bench = _bench()
    out, profile = tmp_path / "result.json", tmp_path / "profile.txt"
    args = ["--preset", "tiny", "--lengths", "llava665k", "--length-scale", "0.05", "--samples", "24", "--steps", "6",
            "--warmup-steps", "2", "--log-every", "2", "--micro-batch-size", "4", "--num-workers", "0",
            "--workdir", str(tmp_path / "work"), "--json", str(out), "--no-engine-tuning", "--profile", str(profile)]
    assert bench.main(args) == 0
    result = json.loads(out.read_text())
    run = result["mmzoo"]
    assert result["log_every"] == 2 and run["tokens_per_s"] > 0 and 0 < run["mfu"] < 1
    assert run["engine_tuning"] == []  # --no-engine-tuning: DeepSpeed's engine as it comes
    assert run["tokens_per_step"] == pytest.approx(4 * result["sample_tokens"]["mean"], rel=0.6)  # 4 samples a step
    text = profile.read_text()
    assert text.startswith("2 profiled step(s) after 2:") and "aten::mm" in text
    summary = run["profile"]
    assert summary["steps"] == 2 and summary["wall_seconds"] > 0 and summary["device_busy"] is None  # CPU
    assert any(op["name"] in ("aten::mm", "aten::addmm") for op in summary["top_operators"])
    with pytest.raises(SystemExit):
        bench.main(args[:-2] + ["--warmup-steps", "3"])  # the timing must start at a metrics line
    assert "multiple of --log-every" in capsys.readouterr().err


def test_train_bench_accumulates_packs_and_can_skip_the_final_checkpoint(tmp_path):
    """--accumulation 2: both loops take two packs an optimizer step (more tokens a step than one pack holds);
    --no-final-checkpoint: mmzoo's run writes no checkpoint when no save falls inside it."""
    bench = _bench()
    out = tmp_path / "result.json"
    args = ["--preset", "tiny", "--lengths", "llava665k", "--length-scale", "0.05", "--samples", "24", "--steps", "3",
            "--warmup-steps", "1", "--micro-batch-size", "4", "--num-workers", "0", "--compare-bare", "--packing",
            "--accumulation", "2", "--no-final-checkpoint", "--workdir", str(tmp_path / "work"), "--json", str(out)]
    assert bench.main(args) == 0
    result = json.loads(out.read_text())
    mmzoo, bare = result["mmzoo"], result["bare"]
    assert result["accumulation"] == 2
    assert mmzoo["tokens_per_step"] == bare["tokens_per_step"] > result["max_tokens"]  # two packs a step
    assert mmzoo["checkpoint"]["saves"] == 0
