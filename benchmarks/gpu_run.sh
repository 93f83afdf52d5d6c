#!/usr/bin/env bash
# One GPU session, prepared in advance (device time is scarce): install the carried wheels, a smoke check
# (fail fast), the GPU tests, then the training benchmarks on the 1b preset with real vocabularies.
# Everything goes to $OUT/gpu_run.log and one JSON per benchmark run. Each step has its own time limit and
# a failing step does not stop the next one.
#
#   WHEELS=../.whl VOCAB=vocab OUT=/tmp/out bash benchmarks/gpu_run.sh
#
# WHEELS: deepspeed (pip wheel --no-deps --no-build-isolation deepspeed==0.19.8), pydantic, pydantic-core,
# annotated-types, typing-inspection, hjson, typing_extensions, transformers 5.24, liger-kernel (cp312 wheels,
# see ../shared/gpu.md). VOCAB: tokenizer folders llama-2/ and qwen2/ from benchmarks/real_vocab.py.
set -u
OUT=${OUT:-/tmp/mmzoo-gpu-out}
WHEELS=${WHEELS:-../.whl}
VOCAB=${VOCAB:-vocab}
STEPS=${STEPS:-8}
QUICK=${QUICK:-0}  # 1: CPU dry run of this script (tiny preset, a few steps)
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_run.log") 2>&1
start=$(date +%s)
step() { echo; echo "=== $(date -u +%H:%M:%S) (+$(( $(date +%s) - start )) s) $*"; }
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 3
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi

step smoke
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
python3 - <<'PY' || exit 4
import torch, transformers, deepspeed, pydantic, mmzoo.train.loop, mmzoo.train.packing as p
print("torch", torch.__version__, "transformers", transformers.__version__, "deepspeed", deepspeed.__version__,
      "cuda", torch.cuda.is_available() and torch.cuda.get_device_name(), "varlen", p._varlen_attn() is not None)
try:
    import liger_kernel, triton; print("liger-kernel ok, triton", triton.__version__)
except Exception as exc: print("liger-kernel unavailable:", exc)
PY

if [ "$QUICK" = 1 ]; then
  B="timeout 300 python3 benchmarks/train_bench.py --workdir /tmp/mmzoo-bench-quick --preset tiny --precision fp32 --lengths llava665k --length-scale 0.05 --samples 64 --steps 4 --warmup-steps 2 --num-workers 1"
  L2=""; QW=""
else
  step GPU tests
  timeout 200 python3 -m pytest tests/train/test_train_gpu.py -q -p no:cacheprovider -rs 2>&1 | tail -30
  B="timeout 150 python3 benchmarks/train_bench.py --workdir /tmp/mmzoo-bench --preset 1b --precision bf16 --lengths llava665k --samples 384 --steps $STEPS --warmup-steps 3 --num-workers 4"
  L2="--tokenizer $VOCAB/llama-2"; QW="--tokenizer $VOCAB/qwen2"
fi

step "llama-2 vocabulary, padded micro batch 16, mmzoo vs bare"
$B $L2 --micro-batch-size 16 --compare-bare --json "$OUT/l2_padded_mb16.json" | tail -4
step "llama-2 vocabulary, packed (~16 samples a micro batch), mmzoo vs bare"
$B $L2 --micro-batch-size 16 --packing --compare-bare --json "$OUT/l2_packed.json" | tail -4
step "qwen2 vocabulary, padded micro batch 8, plain cross-entropy"
$B $QW --micro-batch-size 8 --json "$OUT/qw_mb8_plain.json" | tail -3
step "qwen2 vocabulary, padded micro batch 16, chunked cross-entropy"
$B $QW --micro-batch-size 16 --cross-entropy chunked --json "$OUT/qw_mb16_chunked.json" | tail -3
step "qwen2 vocabulary, padded micro batch 16, plain cross-entropy"
$B $QW --micro-batch-size 16 --json "$OUT/qw_mb16_plain.json" | tail -3
if [ "$QUICK" != 1 ]; then
  step "llama-2 vocabulary, packed, Liger fused CE + RMSNorm/SwiGLU/RoPE"
  $B $L2 --micro-batch-size 16 --packing --cross-entropy liger --liger-kernels --json "$OUT/l2_packed_liger.json" | tail -3
fi
step done
