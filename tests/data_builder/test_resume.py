"""SIGKILL in the middle of a build, then a re-run: same bytes as an uninterrupted build, finished shards reused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from builder_helpers import IDS

from hifi_portrait.data import BuilderConfig, build_dataset

SCRIPT = """
import json, sys
import torch
torch.set_num_threads(1)
from hifi_portrait.data import BuilderConfig, build_dataset
cfg = BuilderConfig(workers=1, shard_size=2, labels="none")
r = build_dataset([sys.argv[1]], sys.argv[2], cfg, progress=False)
print("RESULT " + json.dumps({"computed": r.shards_computed, "reused": r.shards_reused, "total": r.shards_total}))
"""


def _run(script: Path, src: Path, out: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, str(script), str(src), str(out)], capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def _output_files(out: Path) -> dict[str, bytes]:
    manifest = json.loads((out / "manifest.json").read_text())
    files = {rel: (out / rel).read_bytes() for rel in manifest["files"]}
    files["manifest.json"] = (out / "manifest.json").read_bytes()
    return files


@pytest.mark.slow
def test_sigkill_and_resume(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    for person in ("guido_van_rossum", "paul_allen", "steve_wozniak"):
        for path in sorted((IDS / person).glob("*.jpg"))[:3]:
            (src / f"{person}-{path.name}").write_bytes(path.read_bytes())
    (src / "broken.jpg").write_bytes(b"not a jpeg")  # 10 images -> 5 shards of 2
    script = tmp_path / "build.py"
    script.write_text(SCRIPT)

    reference = _run(script, src, tmp_path / "uninterrupted")
    assert reference == {"computed": 5, "reused": 0, "total": 5}

    out = tmp_path / "killed"
    work = out / "work" / "analysis"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(src), str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 200
    finished: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        finished = sorted(work.glob("shard-*.npz")) if work.is_dir() else []
        if finished:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the build ended before it could be killed"
    assert not (out / "manifest.json").exists()
    finished = sorted(work.glob("shard-*.npz"))
    assert 1 <= len(finished) < 5
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished}

    resumed = _run(script, src, out)
    assert resumed["reused"] == len(before) and resumed["computed"] == 5 - len(before)
    for name, stamp in before.items():  # finished shards were not recomputed nor rewritten
        path = work / name
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == stamp
    assert _output_files(out) == _output_files(tmp_path / "uninterrupted")
    assert not list(out.rglob(".tmp-*"))

    # a third run (here, in this process) computes nothing, loads no model, and rewrites the same bytes
    again = build_dataset([src], out, BuilderConfig(workers=1, shard_size=2, labels="none"), progress=False)
    assert (again.shards_computed, again.shards_reused) == (0, 5)
    assert _output_files(out) == _output_files(tmp_path / "uninterrupted")
