#!/usr/bin/env bash
# Issue 20's GPU checks in one run of under 9 minutes on a lent H100/H200 (device tool):
#   here first:  bash benchmarks/device_prepare.sh
#   then:        run(command="bash benchmarks/device_w6_w7.sh", carry=[".device"], timeout_s=570)
# It prints, and leaves under $OUT: the GPU and versions (env.txt); the `gpu`-marked tests (chunked loss
# and QLoRA under bf16 autocast on CUDA, gpu_tests.log); W6 (GPT-2 124M shape, 2 repetitions: tokens/s
# ours/baseline, eval loss of both, MFU against the datasheet dense bf16 peak) and W7 (Qwen2.5-0.5B
# shape, LoRA and QLoRA chat SFT, 1 repetition: real tokens/s and peak CUDA memory, ours/plain peft),
# each as the harness's table (w6.log, w7.log) and JSON (w6.json, w7.json; written after every arm, so
# a run stopped by its time limit keeps what finished), and each work folder's arm logs and arm JSONs
# (w6_arms.tgz, w7_arms.tgz): 8 files, the most the device tool brings back.
# DEVICE_SMOKE=1 checks the script itself on any machine: smoke sizes, the current environment's packages.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/ptft-device-out}
mkdir -p "$OUT"
SMOKE=()
if [ "${DEVICE_SMOKE:-0}" = 1 ]; then
  SMOKE=(--smoke)
else
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .device/whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PTFT_HF_SHARED_DATA=$PWD/.device/data PYTHONUNBUFFERED=1 \
  HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=true
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
  python3 -c "import torch, transformers, peft, bitsandbytes, datasets, accelerate, fsspec, pyarrow, regex; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__, '| peft', peft.__version__, '| bitsandbytes', bitsandbytes.__version__, '| datasets', datasets.__version__, '| accelerate', accelerate.__version__, '| fsspec', fsspec.__version__, '| pyarrow', pyarrow.__version__, '| regex', regex.__version__)"
} 2>&1 | tee "$OUT/env.txt"
timeout 75 python3 -m pytest -q -p no:cacheprovider -p no:randomly -m gpu tests/unit/test_cuda_bf16.py 2>&1 | tail -15 | tee "$OUT/gpu_tests.log"
timeout 250 python3 -m benchmarks.run --workloads w6 --reps 2 --threads 8 "${SMOKE[@]}" --out "$OUT/w6.json" --workdir /tmp/bench_w6 2>&1 \
  | grep -v "it/s\]" | tee "$OUT/w6.log"
pkill -f benchmarks.arms || true   # an arm left running when `timeout` stopped the orchestrator
timeout 190 python3 -m benchmarks.run --workloads w7 --reps 1 --threads 8 "${SMOKE[@]}" --out "$OUT/w7.json" --workdir /tmp/bench_w7 2>&1 \
  | grep -v "it/s\]" | tee "$OUT/w7.log"
pkill -f benchmarks.arms || true
for w in w6 w7; do
  [ -d /tmp/bench_$w ] && tar -czf "$OUT/${w}_arms.tgz" -C /tmp/bench_$w out logs 2>/dev/null
done
ls -la "$OUT"
