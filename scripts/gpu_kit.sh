#!/usr/bin/env bash
# Prepare the two uploads of a GPU training session (README, "On a GPU"): the device takes at most
# 64 MiB per call with the repository (36 MB), cannot install packages and has no music21,
# FluidSynth or SoundFonts. So:
#   .gpu/a  the SoundFont subset the renderer's training presets need (23 MB of FluidR3's 148)
#   .gpu/b  the score pack, FluidSynth with the shared libraries it links, and the wheels the
#           device's Python lacks
# Then, on the device (scripts/gpu_train.sh): call 1 carries .gpu/a, call 2 (within the
# machine's 30 s warm window) carries .gpu/b, renders, trains and sends the model back.
# Usage: bash scripts/gpu_kit.sh   (KIT=folder of `tutti data kit`, default ~/.cache/tutti/kit)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
KIT=${KIT:-$HOME/.cache/tutti/kit}
$PY -m tutti.cli data kit --out "$KIT" --jobs "${JOBS:-2}"
rm -rf .gpu && mkdir -p .gpu/a .gpu/b/whl
cp "$KIT/fluidr3.sf2" .gpu/a/
tar -C "$KIT" -cJf .gpu/b/scores.tar.xz scores

lib=$(ldconfig -p | grep -o '/[^ ]*libfluidsynth\.so\.3$' | head -1)
libs=$(mktemp -d)
cp -L "$lib" "$libs"/
ldd "$lib" | awk '$3 ~ /^\// {print $3}' \
    | grep -v -E '/(libc|libm|libpthread|libdl|librt|libgcc_s|libstdc\+\+)\.so|ld-linux' \
    | xargs -I{} cp -L {} "$libs"/
tar -C "$libs" -cJf .gpu/b/fluidsynth-libs.tar.xz .
rm -rf "$libs"

# Python 3.12 wheels of what the device lacks, at this environment's versions
version() { $PY -c "import importlib.metadata as m; print(m.version('$1'))"; }
pkgs=""
for p in soundfile soxr auraloss omegaconf pyclarity pyloudnorm cffi pycparser pyfluidsynth; do
    pkgs="$pkgs $p==$(version $p)"
done
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/b/whl $pkgs
$PY -m pip wheel -q --no-deps -w .gpu/b/whl "antlr4-python3-runtime==$(version antlr4-python3-runtime)"
du -sh .gpu/a .gpu/b
echo "tracked files travel too: $(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) bytes"
