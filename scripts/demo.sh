#!/usr/bin/env bash
# The main job on the shipped default model and the bundled example (run by `make demo`):
# reference systems and Tutti over the example's CAD2 split, HAAQI for each, and one
# `tutti rebalance` call on a single file.
set -euo pipefail
cd "$(dirname "$0")/.."
export BENTOML_DO_NOT_TRACK=true
T=.venv/bin/tutti
ROOT=examples/cad2
OUT=out/demo
mkdir -p "$OUT"

$T baseline noop "$ROOT" --split valid --out "$OUT/noop"
$T baseline oracle "$ROOT" --split valid --out "$OUT/oracle"
$T enhance "$ROOT" --split valid --out "$OUT/tutti"
$T enhance "$ROOT" --split valid --causal --out "$OUT/tutti_causal"
for system in noop oracle tutti tutti_causal; do
    echo "== $system"
    $T evaluate "$ROOT" --split valid --enhanced "$OUT/$system" --jobs 2
done

# One recording for one listener: the bundled string quartet, first violin up, cello down.
$T rebalance "$ROOT/audio/tutti-valid-00002/mixture.flac" \
    --gains "Violin_1=+6,Cello=-3" --instruments "Violin_1,Violin_2,Viola,Cello" \
    --audiogram "L:45,45,35,45,60,65,70,65;R:40,40,45,45,60,65,80,80" \
    --out "$OUT/rebalanced.flac"
echo "demo outputs in $OUT"
