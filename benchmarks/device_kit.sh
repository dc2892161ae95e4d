#!/usr/bin/env bash
# The device kit for the issue-24 grid (benchmarks/cifar_grid.py) on a lent GPU machine (one H200,
# 16 cores, no network, its own python 3.12 with torch 2.11 / torchvision 0.26, typer, pyyaml, pillow,
# numpy, scipy, tqdm, matplotlib; /work/.library/device/KINDS.md). Run it HERE, in the root of the
# checkout the device tool sends, with network; it
#   1. downloads into .whl/ the wheels that machine lacks for `sagan prepare|train` and cifar_grid.py
#      (cp312, manylinux x86_64; the versions of constraints.txt). torch is not carried: the box's
#      2.11 is inside pyproject's range (>=2.6,<2.15);
#   2. copies the CIFAR-10 archive into .grid-data/;
#   3. lists both in .git/info/exclude (KIT_EXCLUDE=0: not), checks that what travels is <= 60 MiB,
#   4. prints the device tool's `run` call.
# Usage: bash benchmarks/device_kit.sh [ARCHIVE]   (default ../shared/datasets/cifar10-jpg.tar.gz)
# PYTHON (default python3) must have pip; it only downloads, nothing is installed here.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=${PYTHON:-python3}
ARCHIVE=${1:-../shared/datasets/cifar10-jpg.tar.gz}
# name==version; the versions are constraints.txt's (checked below)
WHEELS=(
  pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  typing_extensions==4.16.0 pytorch-fid==0.3.0 typer==0.29.2
)
for spec in "${WHEELS[@]}"; do
  name=${spec%%==*}
  pinned=$(grep -i -E "^${name//[-_]/[-_]}==" constraints.txt | head -1 || true)
  if [ -n "$pinned" ] && [ "${pinned#*==}" != "${spec#*==}" ]; then
    echo "device_kit: $spec, but constraints.txt pins $pinned: update WHEELS" >&2
    exit 2
  fi
done
[ -f "$ARCHIVE" ] || { echo "device_kit: $ARCHIVE not found (the CIFAR-10 JPEG archive)" >&2; exit 2; }

if [ "${KIT_EXCLUDE:-1}" != 0 ]; then
  exclude=$(git rev-parse --git-path info/exclude)
  mkdir -p "$(dirname "$exclude")"
  for d in /.whl/ /.grid-data/; do grep -qxF "$d" "$exclude" 2>/dev/null || echo "$d" >>"$exclude"; done
fi
rm -rf .whl && mkdir -p .whl .grid-data
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
cp "$ARCHIVE" .grid-data/cifar10-jpg.tar.gz
ls -l .whl .grid-data

# What travels: tracked + untracked-not-ignored files, and the two carried folders (counted once).
tree=$(git ls-files -co --exclude-standard -z -- . ':!.whl' ':!.grid-data' | xargs -0 -r du -cb -- 2>/dev/null | tail -1 | cut -f1)
carried=$(du -cb .whl .grid-data | tail -1 | cut -f1)
total=$((tree + carried))
echo "travels: working tree $((tree / 1024)) KiB + .whl and .grid-data $((carried / 1024)) KiB = $((total / 1048576)) MiB"
if [ "$total" -gt $((60 * 1048576)) ]; then
  echo "device_kit: $total bytes would travel, over 60 MiB (the device tool's limit is 64 MiB)" >&2
  exit 1
fi

cat <<'EOF'

The device tool's call (one command, about 10 minutes of the 15 a session has; GPU time unmeasured):
  run(carry=[".whl", ".grid-data"], timeout_s=600, command=
    "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit; set -o pipefail; nvidia-smi -L; PYTHONUNBUFFERED=1 python3 benchmarks/cifar_grid.py --archive .grid-data/cifar10-jpg.tar.gz --work /tmp/grid --jobs 12 --train-budget-s 330 --progress-s 30 --out $OUT 2>&1 | tee $OUT/console.log")
It brings back grid.json, grid.txt, montage.png, logs.tar.gz and console.log. Runs unfinished when the
training budget (330 s) ran out are stopped and reported (exit 1); /tmp/grid lasts only while the
machine stays warm (30 s), so an immediate second call of the same command continues them.
EOF
