#!/usr/bin/env bash
# On the device machine, in the repository root (the device tool's `run`), after
# scripts/gpu_kit.sh here:
#   bash scripts/gpu_train.sh a                               # carry [".gpu/a"]: keep the SoundFont
#   bash scripts/gpu_train.sh b CONFIG MINUTES [KEY=VALUE...] # carry [".gpu/b"], within 30 s
# Stage b installs the wheels, renders HOURS (default 3) of training data with every core
# (seed SEED, default 100: not one of the renders here), trains CONFIG for MINUTES with the
# overrides, and leaves in $OUT the run's log and its best model (files over 15 MB split into
# .part-aa, -ab...: `cat` them back together here). Validation reports no HAAQI there
# (train.valid_haaqi_pairs=0): pyclarity's recipe needs pyFLAC, which has no Python 3.12 wheel;
# score the model here with benchmarks/quality.py.
# (PY, SETUP=0 and KIT_DIR let it run here as a dry run: no wheels, no ldconfig.)
set -euo pipefail
K=${KIT_DIR:-/tmp/kit}
PY=${PY:-python3}
stage=${1:?stage a or b}
if [ "$stage" = a ]; then
    mkdir -p "$K" && cp .gpu/a/* "$K"/ && ls -la "$K"
    exit 0
fi
config=${2:?config}; minutes=${3:?minutes}; shift 3
if [ "${SETUP:-1}" = 1 ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
        .gpu/b/whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
test -f "$K/fluidr3.sf2" || { echo "stage a has not run on this machine"; exit 2; }
mkdir -p "$K/libs" "$K/reg"
tar -C "$K/libs" -xJf .gpu/b/fluidsynth-libs.tar.xz
tar -C "$K" -xJf .gpu/b/scores.tar.xz
# pyfluidsynth finds the library through ldconfig's cache; its dependencies come from libs/
ln -sf "$K/libs/libfluidsynth.so.3" "$K/reg/"
if [ "${SETUP:-1}" = 1 ]; then
    echo "$K/reg" > /etc/ld.so.conf.d/zz-tutti-fluidsynth.conf && ldconfig
fi
t0=$(date +%s)
LD_LIBRARY_PATH="$K/libs" $PY -m tutti.cli data render --out ${DATA:-/tmp/data} \
    --hours "${HOURS:-3}" --seed "${SEED:-100}" --jobs "$(nproc)" \
    "corpus.score_pack=$K/scores" "timbre.sources.fluidr3=$K/fluidr3.sf2" \
    splits.valid_timbre=false 2>&1 | tail -c 2000
echo "render: $(( $(date +%s) - t0 )) s"
$PY -m tutti.cli train --config "$config" "data.roots=[${DATA:-/tmp/data}]" data.pcm_cache=/tmp/pcm \
    data.workers=12 run_dir=${RUN:-/tmp/run} "train.max_minutes=$minutes" \
    train.valid_haaqi_pairs=0 "$@" 2>&1 | tail -c 3000
$PY -m tutti.cli export ${RUN:-/tmp/run} --out ${MODEL:-/tmp/model}
cp ${RUN:-/tmp/run}/log.csv "$OUT"/ && mkdir -p "$OUT/model"
for f in ${MODEL:-/tmp/model}/*; do
    if [ "$(stat -c %s "$f")" -gt 15000000 ]; then
        split -b 15000000 "$f" "$OUT/model/$(basename "$f").part-"
    else
        cp "$f" "$OUT/model/"
    fi
done
ls -la "$OUT/model"
