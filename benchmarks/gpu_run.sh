#!/usr/bin/env bash
# One GPU session, prepared in advance (device time is scarce): install the carried wheels, a smoke check
# (fail fast), the GPU tests, then the training benchmarks on the 1b preset with real vocabularies.
# Everything goes to $OUT/gpu_run.log and one JSON per benchmark run. Each step has its own time limit and
# a failing step does not stop the next one; the whole script keeps within BUDGET seconds (one `run` call).
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

# One `run` call has 10 minutes: every step gets what is left of BUDGET (minus a reserve for the log to come
# back), most important first; a step that would not fit is skipped and says so.
BUDGET=${BUDGET:-560}
left() { echo $(( BUDGET - ($(date +%s) - start) )); }
fits() {  # fits SECONDS: run the next step only if SECONDS are left
  if [ "$(left)" -lt "$1" ]; then echo "--- skipped (needs ${1} s, $(left) s left)"; return 1; fi
}
if [ "$QUICK" = 1 ]; then
  B="python3 benchmarks/train_bench.py --workdir /tmp/mmzoo-bench-quick --preset tiny --precision fp32 --lengths llava665k --length-scale 0.05 --samples 64 --steps 4 --warmup-steps 2 --num-workers 1"
  L2=""; QW=""; CK_STEPS="--steps 6 --save-every 2"
else
  step "GPU tests (bf16/fp16 training, async checkpoints on CUDA, packing, Liger, flash-attn/two GPUs where present)"
  fits 150 && timeout 200 python3 -m pytest tests/train/test_train_gpu.py -q -p no:cacheprovider -rs 2>&1 | tail -30
  B="python3 benchmarks/train_bench.py --workdir /tmp/mmzoo-bench --preset 1b --precision bf16 --lengths llava665k --samples 384 --steps $STEPS --warmup-steps 3 --num-workers 4"
  L2="--tokenizer $VOCAB/llama-2"; QW="--tokenizer $VOCAB/qwen2"; CK_STEPS="--steps 10 --save-every 4"
fi
T=${STEP_TIMEOUT:-150}

# 1. checkpoints off the critical path: the same run with saves every 4 steps, written synchronously and in the
#    background (the loop's waiting time for the saves is printed; those of steps 4 and 8 fall in the timed steps,
#    the end-of-run one at step 10 is always waited for)
step "async checkpoint timing: llama-2 vocabulary, packed, saves every 4 steps, synchronous"
fits 90 && timeout $T $B $L2 --micro-batch-size 16 --packing $CK_STEPS --async-checkpoint false --json "$OUT/ckpt_sync.json" | tail -3
step "async checkpoint timing: the same, written in the background"
fits 90 && timeout $T $B $L2 --micro-batch-size 16 --packing $CK_STEPS --async-checkpoint true --json "$OUT/ckpt_async.json" | tail -3

# 2. the 151 646-token vocabulary: plain cross-entropy at micro batch 8 against fused linear cross-entropy at 16
#    (the issue's target: a micro batch at least 2× larger in the same memory; peak memory is printed)
step "qwen2 vocabulary, padded micro batch 8, plain cross-entropy"
fits 90 && timeout $T $B $QW --micro-batch-size 8 --json "$OUT/qw_mb8_plain.json" | tail -3
if [ "$QUICK" != 1 ]; then
  step "qwen2 vocabulary, padded micro batch 16, Liger fused linear cross-entropy"
  fits 90 && timeout $T $B $QW --micro-batch-size 16 --cross-entropy liger --json "$OUT/qw_mb16_liger.json" | tail -3
fi
step "qwen2 vocabulary, padded micro batch 16, chunked cross-entropy"
fits 90 && timeout $T $B $QW --micro-batch-size 16 --cross-entropy chunked --json "$OUT/qw_mb16_chunked.json" | tail -3

# 3. mmzoo against the bare loop, padded and packed (the figures of 2026-11-27, re-measured)
step "llama-2 vocabulary, padded micro batch 16, mmzoo vs bare"
fits 120 && timeout $T $B $L2 --micro-batch-size 16 --compare-bare --json "$OUT/l2_padded_mb16.json" | tail -4
step "llama-2 vocabulary, packed (~16 samples a micro batch), mmzoo vs bare"
fits 120 && timeout $T $B $L2 --micro-batch-size 16 --packing --compare-bare --json "$OUT/l2_packed.json" | tail -4
if [ "$QUICK" != 1 ]; then
  step "llama-2 vocabulary, packed, Liger fused CE + RMSNorm/SwiGLU/RoPE"
  fits 90 && timeout $T $B $L2 --micro-batch-size 16 --packing --cross-entropy liger --liger-kernels --json "$OUT/l2_packed_liger.json" | tail -3
  step "llama-2 vocabulary, packed, torch.compile (inductor)"
  fits 120 && timeout $T $B $L2 --micro-batch-size 16 --packing --compile --json "$OUT/l2_packed_compile.json" | tail -3
fi
step done
