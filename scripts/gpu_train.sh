#!/usr/bin/env bash
# On the device machine, in the repository root (the device tool's `run`), after
# scripts/gpu_kit.sh here:
#   bash scripts/gpu_train.sh a                               # carry [".gpu/a"]: keep the SoundFont
#   bash scripts/gpu_train.sh b CONFIG MINUTES [KEY=VALUE...] # carry [".gpu/b"], within 30 s
#   bash scripts/gpu_train.sh b CONFIG MINUTES [KEY=VALUE...] -- [KEY=VALUE...] -- ...
# Stage b installs the wheels, renders HOURS (default 3) of training data with every core
# (seed SEED, default 100: not one of the renders here), trains CONFIG for MINUTES with the
# overrides, and leaves in $OUT the run's log and its best model (files over 15 MB split into
# .part-aa, -ab...: `cat` them back together here). With `--`, each group after it is a
# variant: all train at once on the one GPU (the overrides before the first `--` shared, the
# data workers split between them), each to $OUT/v1, v2... with its log, model and
# `benchmarks/slot_kl.py` on 32 examples of the render's validation split (slot_kl.txt: a first
# look; it does not predict HAAQI, README "Session 35"). Validation reports no HAAQI there
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
# Variants: the groups of the overrides split at `--` (none: one run with all of them); each
# variant kept as one string, its overrides joined by the unit separator (no word splitting or
# globbing when it is taken apart: values may hold spaces or brackets)
US=$'\x1f'
common=() variants=() group=() seen=0
for arg in "$@"; do
    if [ "$arg" = -- ]; then
        if [ $seen = 0 ]; then common=("${group[@]}"); else variants+=("$(IFS=$US; echo "${group[*]}")"); fi
        seen=1 group=()
    else
        group+=("$arg")
    fi
done
if [ $seen = 0 ]; then common=("${group[@]}"); else variants+=("$(IFS=$US; echo "${group[*]}")"); fi
n=${#variants[@]}
workers=12
[ "$n" -gt 1 ] && workers=$(( ($(nproc) - 2) / n > 2 ? ($(nproc) - 2) / n : 2 ))

train_one() {  # RUN_DIR MODEL_DIR DEST [KEY=VALUE...]
    local run=$1 model=$2 dest=$3; shift 3
    $PY -m tutti.cli train --config "$config" "data.roots=[${DATA:-/tmp/data}]" \
        data.pcm_cache=/tmp/pcm "data.workers=$workers" "run_dir=$run" \
        "train.max_minutes=$minutes" train.valid_haaqi_pairs=0 "${common[@]}" "$@" 2>&1 \
        | tail -c 3000
    $PY -m tutti.cli export "$run" --out "$model"
    mkdir -p "$dest/model" && cp "$run/log.csv" "$dest"/
    if [ "$n" -gt 0 ]; then
        $PY benchmarks/slot_kl.py "${DATA:-/tmp/data}" --model "$model" --config "$config" \
            --tau-ms 200 > "$dest/slot_kl.txt" 2>&1 || true
        cat "$dest/slot_kl.txt"
    fi
    for f in "$model"/*; do
        if [ "$(stat -c %s "$f")" -gt 15000000 ]; then
            split -b 15000000 "$f" "$dest/model/$(basename "$f").part-"
        else
            cp "$f" "$dest/model/"
        fi
    done
}

if [ "$n" = 0 ]; then
    train_one "${RUN:-/tmp/run}" "${MODEL:-/tmp/model}" "$OUT"
else
    # (the decoded-PCM cache is shared: its files are written atomically, whoever comes first)
    for i in $(seq 1 "$n"); do
        IFS=$US read -r -a overrides <<< "${variants[$((i - 1))]}"
        train_one "${RUN:-/tmp/run}-v$i" "${MODEL:-/tmp/model}-v$i" "$OUT/v$i" \
            "${overrides[@]}" > "/tmp/variant-$i.log" 2>&1 &
    done
    wait
    for i in $(seq 1 "$n"); do
        echo "== v$i: ${variants[$((i - 1))]//$US/ }"
        tail -c 1500 "/tmp/variant-$i.log"
    done
fi
ls -laR "$OUT"
