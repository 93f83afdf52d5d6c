"""Upcycling row of benchmarks/convert_bench.py: time per output GB of `convert --moe-experts` vs `cp`.

``bench_upcycle(src_hf, workdir)`` converts a dense hf checkpoint to an upcycled hf checkpoint
(mixtral style, 4 experts, all layers: every expert a byte-range copy of the dense MLP) and times
``cp -r`` of the source for reference; it also records peak RSS growth of the conversion process.
"""
from __future__ import annotations

import resource
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench_upcycle(src_hf: Path, workdir: Path, *, experts: int = 4, shard_size: str = "2GB") -> dict[str, Any]:
    from mmzoo import convert

    src_hf, workdir = Path(src_hf), Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    copy_out, moe_out = workdir / "cp-copy", workdir / "upcycled"
    for path in (copy_out, moe_out):
        if path.exists():
            shutil.rmtree(path)

    start = time.perf_counter()
    subprocess.run(["cp", "-r", str(src_hf), str(copy_out)], check=True)
    cp_s = time.perf_counter() - start
    cp_gb = _dir_bytes(copy_out) / 1e9

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = convert(src_hf, moe_out, tgt_fmt="hf", shard_size=shard_size,
                     moe=dict(num_experts=experts, top_k=2, style="mixtral", layers="all", targets=["text"]))
    up_s = time.perf_counter() - start
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    up_gb = _dir_bytes(moe_out) / 1e9

    row = {
        "name": f"upcycle hf -> hf ({experts} experts, mixtral, all layers)",
        "output_gb": round(up_gb, 4),
        "seconds": round(up_s, 3),
        "s_per_gb": round(up_s / up_gb, 3) if up_gb else None,
        "cp_gb": round(cp_gb, 4),
        "cp_seconds": round(cp_s, 3),
        "cp_s_per_gb": round(cp_s / cp_gb, 3) if cp_gb else None,
        "vs_cp": round((up_s / up_gb) / (cp_s / cp_gb), 2) if up_gb and cp_gb and cp_s else None,
        "peak_rss_growth_mb": round(max(0, rss_after - rss_before) / 1024, 1),  # ru_maxrss is KiB on Linux
        "tensors": result.tensors,
    }
    shutil.rmtree(copy_out, ignore_errors=True)
    shutil.rmtree(moe_out, ignore_errors=True)
    return row


if __name__ == "__main__":
    import json
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        if len(sys.argv) > 1:
            src = Path(sys.argv[1])
        else:
            from mmzoo.tiny import build_llava

            src = Path(tmp) / "dense"
            build_llava(src)
        print(json.dumps(bench_upcycle(src, Path(tmp) / "work"), indent=2))
