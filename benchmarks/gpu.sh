#!/usr/bin/env bash
# Throughput of the real-size architectures on one GPU, within 8 minutes, into benchmarks/throughput.json
# (which `pas plan` reads): SDXL-Turbo 512 px 1 step at batch 1 and 16, SD-1.5 25 steps, CLIP ViT-L/14 and
# ViT-B/32 image embedding, DINO ViT-S/16 and All4One ResNet-50 training steps at 224 px. Random weights, built
# from configs: nothing is downloaded.
#
#   bash benchmarks/gpu.sh                  # on the GPU machine, from the repository root
#   DEVICE=cpu ONLY=tiny PYTHON=.venv/bin/python bash benchmarks/gpu.sh   # a dry run on a CPU
#
# A machine without pas's dependencies (the lent GPU machines have torch, timm, transformers and lightning but
# not diffusers, open_clip or webdataset) takes them as wheels in .whl/ (see the tool library's device README):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl diffusers open_clip_torch ftfy \
#       webdataset braceexpand
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
"$PYTHON" -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
# 8 minutes in all: each figure times about 8 s after its warm-up; the builds of the real architectures dominate
timeout 470 "$PYTHON" benchmarks/throughput.py --device "$DEVICE" --seconds 8 ${ONLY:+--only $ONLY}
"$PYTHON" - <<'PY'
import json
for f in json.load(open("benchmarks/throughput.json"))["figures"]:
    rate = f"{f['images_per_s']:,.1f} img/s" if f.get("images_per_s") else "-"
    print(f"{f['device']:<6}{f['task']:<11}{f['model']:<28}batch {f.get('batch', '-'):>3} {rate:>14}  {f['date']} {f['machine']}")
PY
