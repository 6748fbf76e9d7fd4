#!/usr/bin/env bash
# Run HERE (a machine with pip and ../shared/data) before benchmarks/device_w6_w7.sh runs on a lent GPU:
# puts into .device/ (git-ignored, ~60 MB; the device tool carries at most 64 MiB in all) the wheels
# the device image lacks or holds in other versions (its image has torch, accelerate, tokenizers,
# safetensors, pyarrow, pytest; not datasets, hydra, bitsandbytes) and the two shared data sets W6 and
# W7 read (WikiText-2, BANKING77): a device reaches no network and ../shared does not travel.
#   bash benchmarks/device_prepare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${PTFT_HF_SHARED_DATA:-../shared/data}
grep -qxF '/.device/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.device/' >> .git/info/exclude; }
rm -rf .device && mkdir -p .device/whl .device/data
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 any; do
  platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d .device/whl \
  transformers==5.24.0 peft==0.21.2 datasets==5.2.0 bitsandbytes==0.50.2 hydra-core==1.3.8 omegaconf==2.3.1 \
  evaluate==0.4.6 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0   # datasets 5.2 wants fsspec <= 2026.9.0
python3 -m pip wheel -q --no-deps -w .device/whl antlr4-python3-runtime==4.9.3   # hydra's parser: a source release only
cp -r "$SHARED/wikitext-2" "$SHARED/banking77" .device/data/
du -sh .device
