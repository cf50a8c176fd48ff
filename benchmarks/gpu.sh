#!/usr/bin/env bash
# Throughput of the real-size architectures on one GPU, within 8 minutes, into benchmarks/throughput.json
# (which `pas plan` reads): the device augmentation path's samples/s per method (input <method>/device-gpu), SDXL-Turbo 512 px 1 step at batch 1 and 16, SD-1.5 25 steps, CLIP ViT-L/14 and
# ViT-B/32 image embedding, DINO ViT-S/16 and All4One ResNet-50 training steps at 224 px. Random weights, built
# from configs: nothing is downloaded. Each model is built once and timed at each of its batch sizes; each figure
# is saved into the table as soon as it is measured, a figure that fails is saved with its error (and the run goes
# on), and a run stopped by the time limit or killed keeps every figure measured before.
#
#   bash benchmarks/gpu.sh                     # on the GPU machine
#   bash benchmarks/gpu.sh --download-wheels   # where pip reaches the registry: benchmarks/gpu-wheels.txt into .whl/
#   DEVICE=cpu ONLY=tiny PYTHON=.venv/bin/python TABLE=/tmp/t.json bash benchmarks/gpu.sh   # a dry run on a CPU
#
# A machine without pas's dependencies (the lent GPU machines have torch, timm, transformers and lightning but
# not diffusers, open_clip or webdataset) takes them as wheels: benchmarks/gpu-wheels.txt lists them with their
# own needs, `--download-wheels [DIR]` fetches them (for the machine's Python 3.12), and a run installs the wheels
# it finds in .whl/ into a temporary folder first (see the tool library's device README for carrying .whl).
#
# Settings, from the environment: DEVICE (cuda), ONLY (task or model substrings), PYTHON (python3), TABLE (the
# table to update: benchmarks/throughput.json), SECONDS_PER_FIGURE (8), LIMIT_S (470: the whole run), WHEELS (.whl),
# BATCHES (batch sizes to time instead of the suite's), FAIL (models whose timing is made to fail: a check).
# Exit status: 0, 1 when a figure failed, 2 when a package is missing, 124 (or 137) when the time limit stopped
# the run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
if [ "${1:-}" = --download-wheels ]; then
  exec "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "${2:-$WHEELS}" -r benchmarks/gpu-wheels.txt
fi
if [ $# != 0 ]; then
  echo "gpu.sh: unknown argument '$1': settings come from the environment; the one argument is --download-wheels [DIR]" >&2
  exit 2
fi
DEVICE=${DEVICE:-cuda}
TABLE=${TABLE:-benchmarks/throughput.json}
LIMIT_S=${LIMIT_S:-470}
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  site=$(mktemp -d)
  trap 'rm -rf "$site"' EXIT
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$WHEELS"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PYTHON" - <<'PY' || exit 2
import importlib

import torch

missing = []
for name in ("diffusers", "open_clip", "webdataset"):
    try:
        importlib.import_module(name)
    except ImportError as error:
        missing.append(f"{name} ({error})")
if missing:
    raise SystemExit(f"gpu.sh: cannot import {'; '.join(missing)}: carry the wheels of benchmarks/gpu-wheels.txt in "
                     ".whl/ (`bash benchmarks/gpu.sh --download-wheels` where pip reaches the registry)")
print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")
PY
# the device augmentation path's own rate (benchmarks/input_pipeline.py --device: nvJPEG decode + every method's
# views, batches of 256), first, as it is short; ONLY runs it when it names "input" (or is unset). On a CPU (the dry
# run) two methods at 64 px. A failing method is saved as failed (FAIL names methods too), the others are kept.
input_rc=0
case " ${ONLY:-input} " in
  *input*)
    small=()
    [ "$DEVICE" = cpu ] && small=(--size 64 --batch 8 --images 8 --repeats 1 --methods dino simclr)
    timeout --kill-after=30 "$((LIMIT_S / 4))" "$PYTHON" benchmarks/input_pipeline.py --device "$DEVICE" --write \
      --table "$TABLE" "${small[@]}" ${FAIL:+--fail $FAIL} || input_rc=$?
    ;;
esac
# 8 minutes in all: each figure times about 8 s after its warm-up; the builds of the real architectures dominate
rc=0
timeout --kill-after=30 "$((LIMIT_S - SECONDS))" "$PYTHON" benchmarks/throughput.py --device "$DEVICE" --seconds "${SECONDS_PER_FIGURE:-8}" \
  --table "$TABLE" ${ONLY:+--only $ONLY} ${BATCHES:+--batches $BATCHES} ${FAIL:+--fail $FAIL} || rc=$?
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then   # 137: still running 30 s after the limit's SIGTERM, or killed
  echo "gpu.sh: stopped at the ${LIMIT_S} s limit (LIMIT_S) or killed; the figures measured before are saved in" \
    "$TABLE" >&2
fi
if [ "$rc" = 0 ] && [ "$input_rc" != 0 ]; then   # the input figure failed or ran out of its quarter of LIMIT_S
  rc=1
fi
if [ -f "$TABLE" ]; then
  "$PYTHON" - "$TABLE" <<'PY'
import json
import sys

for f in json.load(open(sys.argv[1]))["figures"]:
    rate = f"{f['images_per_s']:,.1f} img/s" if f.get("images_per_s") else "-"
    print(f"{f['device']:<6}{f['task']:<11}{f['model']:<28}batch {f.get('batch', '-'):>3} {rate:>14}  {f['date']} "
          f"{f['machine']}" + (f"  {'last try ' if f.get('images_per_s') else ''}FAILED {f['error']}" if f.get("error") else ""))
PY
fi
exit "$rc"
