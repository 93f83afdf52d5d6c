#!/usr/bin/env bash
# One GPU session, prepared in advance (device time is scarce): install the carried wheels, a smoke check
# (fail fast), the GPU tests, then the training benchmarks on the 1b preset with real vocabularies, most important
# first. Everything goes to $OUT/gpu_run.log and one JSON per benchmark run. Each step has its own time limit and
# a failing step does not stop the next one; the whole script keeps within BUDGET seconds (one `run` call).
#
#   WHEELS=.whl VOCAB=vocab OUT=/tmp/out bash benchmarks/gpu_run.sh
#   QUICK=1 WHEELS=/none VOCAB=vocab OUT=/tmp/out bash benchmarks/gpu_run.sh     # CPU dry run, tiny preset
#
# WHEELS: deepspeed (pip wheel --no-deps --no-build-isolation deepspeed==0.19.8), pydantic, pydantic-core,
# annotated-types, typing-inspection, hjson, typing_extensions, transformers 5.24, liger-kernel, and for the tests
# psutil, pytest-timeout, pytest-xdist, execnet (the suite's conftest needs the first two) (cp312 wheels, see
# ../shared/gpu.md). VOCAB: tokenizer folders llama-2/ and qwen2/ from benchmarks/real_vocab.py.
#
# Preparing a session (on the CPU machine, once): the wheels as above into .whl/ (pip download … for cp312
# manylinux, `pip wheel --no-deps --no-build-isolation deepspeed==0.19.8 -w .whl`), the vocabularies with
# `python benchmarks/real_vocab.py -o vocab llama_cpp_python-*.tar.gz` (llama-2/ and qwen2/; `pip download --no-deps
# --no-binary :all: llama-cpp-python` fetches the sdist); keep both out of git (.git/info/exclude) and carry
# them to the GPU machine; one call: `OUT=$OUT WHEELS=.whl VOCAB=vocab BUDGET=545 bash benchmarks/gpu_run.sh` with a
# 600 s limit. The logs and one JSON per run come back under $OUT; their figures go to README "Benchmarks" and
# docs/train.md.
set -u
OUT=${OUT:-/tmp/mmzoo-gpu-out}
WHEELS=${WHEELS:-.whl}
VOCAB=${VOCAB:-vocab}
STEPS=${STEPS:-8}
QUICK=${QUICK:-0}
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
import time, torch, transformers, deepspeed, pydantic, mmzoo.train.loop, mmzoo.train.packing as p
print("torch", torch.__version__, "transformers", transformers.__version__, "deepspeed", deepspeed.__version__,
      "cuda", torch.cuda.is_available() and torch.cuda.get_device_name(), "varlen", p._varlen_attn() is not None)
try:
    import liger_kernel, triton; print("liger-kernel ok, triton", triton.__version__)
except Exception as exc: print("liger-kernel unavailable:", exc)
if torch.cuda.is_available():  # the practical bf16 matmul ceiling of this card, beside the datasheet's 989
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16); b = torch.randn_like(a)
    for _ in range(3): a @ b
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(10): a @ b
    torch.cuda.synchronize(); print(f"bf16 matmul 8192^3: {10 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12:.0f} TFLOP/s")
PY

# One `run` call has 10 minutes: every step gets what is left of BUDGET (minus a reserve for the log to come
# back), most important first; a step that would not fit is skipped and says so.
BUDGET=${BUDGET:-545}
left() { echo $(( BUDGET - ($(date +%s) - start) )); }
fits() {  # fits SECONDS: run the next step only if SECONDS are left
  if [ "$(left)" -lt "$1" ]; then echo "--- skipped (needs ${1} s, $(left) s left)"; return 1; fi
}
T=${STEP_TIMEOUT:-150}
if [ "$QUICK" = 1 ]; then
  B="python3 benchmarks/train_bench.py --workdir /tmp/mmzoo-bench-quick --preset tiny --precision fp32 --lengths llava665k --length-scale 0.05 --samples 64 --steps 4 --warmup-steps 2 --num-workers 1"
  L2=""; BIG="--max-tokens 2048"; BIG_REF="--max-tokens 2048"; BIG_MAX="--max-tokens 3072"
  CK="--steps 9 --save-every 3"; LOG4="--steps 8 --warmup-steps 4 --log-every 4"; ACC2="--steps 8 --warmup-steps 4 --log-every 4 --accumulation 2"
  PROFILE="--steps 5"
else
  B="python3 benchmarks/train_bench.py --workdir /tmp/mmzoo-bench --preset 1b --precision bf16 --lengths llava665k --samples 512 --steps $STEPS --warmup-steps 3 --num-workers 4"
  L2="--tokenizer $VOCAB/llama-2"; BIG="--max-tokens 32768"
  # peak memory grew ~1.43 GiB per 1 000 pack tokens on the H200 with plain cross-entropy (59.0 GiB at 32k, 105.8 at
  # 64k, 117.9 at 72k); chunked cross-entropy drops the [tokens × 32 001] logits, room for packs of 88k there. On an
  # 80 GB card (H100) the largest packs that fit instead
  BIG_REF="--max-tokens 73728"; BIG_MAX="--max-tokens 90112"; CK="--steps 9 --save-every 3"
  GIB=$(python3 -c 'import torch; print(torch.cuda.get_device_properties(0).total_memory // 2**30 if torch.cuda.is_available() else 0)')
  echo "device memory: ${GIB} GiB"
  if [ "${GIB:-0}" -lt 100 ]; then
    BIG="--max-tokens 24576"; BIG_REF="--max-tokens 36864"; BIG_MAX="--max-tokens 45056"
  fi
  # 12 steps, 8 timed (the 2026-11-27 best had 4 timed steps); 8 steps of two packs, 4 timed
  LOG4="--steps 12 --warmup-steps 4 --log-every 4"; ACC2="--steps 8 --warmup-steps 4 --log-every 4 --accumulation 2"
  PROFILE="--steps 5"
fi
NOSAVE="--no-final-checkpoint"  # the end-of-run save is not timed and took ~12 s of device time a run

# 1. MFU (2026-11-28 on an H200, LM head counted at the labelled positions: 37.2 % for (a), 43.2 % for (a) with
#    chunked cross-entropy, 44.5 % for (c); 44.5 % with (c) on BF16_Optimizer): (a) the plain reference — packs of
#    73 728 tokens, compiled blocks, a metrics line every 4 steps, mmzoo.train.engine_tuning —, (b) two packs an
#    optimizer step (the fixed cost of a step paid once per ~190 samples; LLaVA-1.5 trains with 128-256 a step),
#    (c) chunked cross-entropy (no logits where the loss does not read them) with packs of 88k and two a step; then
#    the GPU tests; then a profile of two steps (the device's busy share and where the time goes), (a) without
#    engine_tuning and on DeepSpeed's BF16_Optimizer (what one process pays per step outside the model)
step "MFU (a): llama-2 vocabulary, packed ${BIG_REF#--max-tokens } tokens, compile, a metrics line every 4 steps"
fits 100 && timeout 220 $B $L2 --packing $BIG_REF --compile $LOG4 $NOSAVE --json "$OUT/l2_ref_compile_log4.json" | tail -3
step "MFU (b): the same with two packs an optimizer step (--accumulation 2)"
fits 90 && timeout 200 $B $L2 --packing $BIG_REF --compile $ACC2 $NOSAVE --json "$OUT/l2_ref_compile_acc2.json" | tail -3
step "MFU (c): packed ${BIG_MAX#--max-tokens } tokens, compile + chunked cross-entropy, two packs a step"
fits 90 && timeout 200 $B $L2 --packing $BIG_MAX --compile --cross-entropy chunked $ACC2 $NOSAVE \
  --json "$OUT/l2_max_compile_chunked_acc2.json" | tail -3

if [ "$QUICK" != 1 ]; then
  step "GPU tests (bf16/fp16 training, async checkpoints on CUDA, packing, Liger; flash-attn/two GPUs where present), 3 at a time"
  fits 100 && timeout 170 python3 -m pytest tests/train/test_train_gpu.py -q -p no:cacheprovider -rs -n 3 2>&1 | tail -25
fi
step "profile: packed ${BIG_REF#--max-tokens } tokens, compile, 2 steps after 3"
fits 80 && timeout 170 $B $L2 --packing $BIG_REF --compile $PROFILE $NOSAVE --profile "$OUT/profile_ref_compile.txt" \
  --json "$OUT/l2_ref_compile_profile.json" | tail -3 && head -45 "$OUT/profile_ref_compile.txt"
step "MFU: (a) without mmzoo.train.engine_tuning (DeepSpeed's identity all-reduce, a sync per gradient tensor)"
fits 80 && timeout 200 $B $L2 --packing $BIG_REF --compile $LOG4 $NOSAVE --no-engine-tuning \
  --json "$OUT/l2_ref_compile_log4_untuned.json" | tail -3
step "MFU: (a) on DeepSpeed's BF16_Optimizer (ZeRO-1, fp32 gradient accumulation: flat master weights, one AdamW tensor)"
fits 80 && timeout 200 $B $L2 --packing $BIG_REF --compile $LOG4 $NOSAVE --zero-stage 1 \
  --deepspeed-overrides '{"data_types": {"grad_accum_dtype": "fp32"}}' --json "$OUT/l2_ref_compile_log4_bf16opt.json" | tail -3

# 2. mmzoo against the bare loop at the same settings (both plain cross-entropy, no extra kernels), big packs
step "llama-2 vocabulary, packed ${BIG#--max-tokens } tokens, plain cross-entropy, mmzoo vs bare"
fits 90 && timeout $T $B $L2 --packing $BIG --compare-bare $NOSAVE --json "$OUT/l2_packed32k_bare.json" | tail -4

# 3. background checkpoints with three saves (the pinned buffers of the first are reused by the second: the
#    2026-11-27 runs had only one background save, slower than a synchronous one)
step "async checkpoint: saves at steps 3, 6 (background) and 9 (the last, direct)"
fits 90 && timeout $T $B $L2 --packing $CK --async-checkpoint true --json "$OUT/ckpt_async.json" | tail -3
step "sync checkpoint: the same saves, synchronous"
fits 90 && timeout $T $B $L2 --packing $CK --async-checkpoint false --json "$OUT/ckpt_sync.json" | tail -3
step done
