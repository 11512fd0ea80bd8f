"""Bad-input corpus, dataset builder faults: kill -9, full disk, FIFOs and links, duplicate tar members, umask.

Each case ends in a typed error (exit code per the README), an input listed in ``failures.jsonl`` with its reason,
or a correct dataset; nothing hangs, no worker outlives a killed builder, no half-written file is left.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hifi_portrait.cli.main import app
from hifi_portrait.data import BuilderConfig, build_dataset
from hifi_portrait.errors import DatasetError, OutputError

DATA = Path(__file__).resolve().parents[1] / "data"
IDS = DATA / "ids"
OBAMA = ("obama.jpg", "obama2.jpg", "obama3.jpg")


@pytest.fixture(scope="module")
def analyzer():
    """The real default analyzer, loaded once for this module's in-process builds (``workers=1``)."""
    from hifi_portrait.data.stages import DefaultAnalyzerFactory

    return DefaultAnalyzerFactory()()


def _people(root: Path, per_person: int = 3, people: tuple[str, ...] = ("obama", "guido_van_rossum")) -> Path:
    """A labelled input folder (one sub-folder per person) copied from the bundled photos."""
    for person in people:
        (root / person).mkdir(parents=True, exist_ok=True)
        for path in sorted((IDS / person).glob("*.jpg"))[:per_person]:
            shutil.copy(path, root / person / path.name)
    return root


def _build(analyzer, inputs, out: Path, **cfg):
    config = BuilderConfig(**({"workers": 1, "shard_size": 4, "labels": "folders"} | cfg))
    return build_dataset(inputs, out, config, analyzer_factory=lambda: analyzer, progress=False)


def _failures(out: Path) -> dict[str, dict]:
    lines = (out / "failures.jsonl").read_text().splitlines()
    return {json.loads(line)["key"]: json.loads(line) for line in lines}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TQDM_DISABLE": "1"}


# ---------------------------------------------------------------------------------------------- kill -9
def _wait_for_shards(proc: subprocess.Popen, work: Path, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the build ended before it could be killed"
        if work.is_dir() and len(list(work.glob("shard-*.npz"))) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"no analysis shard after {timeout} s")


def _kill_and_check_descendants(proc: subprocess.Popen, work: Path, grace: float) -> None:
    psutil = pytest.importorskip("psutil")
    descendants = psutil.Process(proc.pid).children(recursive=True)
    assert descendants, "the builder has no worker process"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(p.is_running() and p.status() != "zombie" for p in descendants):
        time.sleep(0.1)
    alive = [p for p in descendants if p.is_running() and p.status() != "zombie"]
    try:
        assert not alive, f"still running {grace} s after kill -9 of the builder: {[p.name() for p in alive]}"
    finally:
        for p in alive:
            p.kill()
    shards = sorted(work.glob("shard-*.npz"))
    time.sleep(1.0)
    assert sorted(work.glob("shard-*.npz")) == shards  # nobody writes shards any more


def _builder(src: Path, out: Path, *extra: str, stdout=subprocess.DEVNULL) -> subprocess.Popen:
    config = out.parent / "cfg.yaml"
    config.write_text("shard_size: 2\nlabels: folders\n")
    cmd = [sys.executable, "-m", "hifi_portrait.cli.main", "-q", "build-dataset", str(src), "--out", str(out)]
    return subprocess.Popen([*cmd, "--config", str(config), *extra], env=_env(), stdout=stdout, text=True)


@pytest.mark.slow
def test_kill_9_of_the_builder_takes_its_pool_workers_with_it(tmp_path):
    src = _people(tmp_path / "photos", per_person=6, people=("obama", "guido_van_rossum", "kit_harington"))
    out = tmp_path / "ds"
    proc = _builder(src, out, "--workers", "2")
    _wait_for_shards(proc, out / "work" / "analysis", 1, timeout=120)
    _kill_and_check_descendants(proc, out / "work" / "analysis", grace=3.0)
    # the same command resumes the interrupted build: finished shards are reused
    rerun = _builder(src, out, "--workers", "1", stdout=subprocess.PIPE)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0 and (out / "manifest.json").is_file()
    reused = int(re.search(r"(\d+) reused", output).group(1))
    assert reused >= 1, output


@pytest.mark.slow
def test_kill_9_of_the_builder_takes_the_local_ray_instance_with_it(tmp_path):
    pytest.importorskip("ray.data")
    src = _people(tmp_path / "photos", per_person=6, people=("obama", "guido_van_rossum", "kit_harington"))
    out = tmp_path / "ds"
    proc = _builder(src, out, "--workers", "1", "--engine", "ray")
    _wait_for_shards(proc, out / "work" / "analysis", 1, timeout=240)
    time.sleep(1.0)  # the guardian's snapshot of the Ray processes (taken every 0.5 s)
    _kill_and_check_descendants(proc, out / "work" / "analysis", grace=10.0)


# ---------------------------------------------------------------------------------------------- full disk
def test_disk_full_is_a_typed_error_naming_the_folder_and_keeps_no_partial_file(analyzer, tmp_path, monkeypatch):
    src = _people(tmp_path / "photos")
    out = tmp_path / "ds"
    from hifi_portrait.utils import files

    real_fdopen = files.os.fdopen

    class Full:
        """A file of a full disk: every write fails with ENOSPC; everything else is the real file's."""

        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def fdopen(fd, mode="r", *args, **kwargs):
        handle = real_fdopen(fd, mode, *args, **kwargs)
        return Full(handle) if "shards" in os.readlink(f"/proc/self/fd/{fd}") else handle

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell which folder a file descriptor writes to")
    monkeypatch.setattr(files.os, "fdopen", fdopen)
    with pytest.raises(OutputError, match=r"cannot write to .*shards: no space left on the device") as info:
        _build(analyzer, [src], out)
    assert str(out / "shards") in str(info.value)
    assert not list(out.rglob(".tmp-*"))
    monkeypatch.undo()  # space freed: the same command completes, reusing the analysis
    result = _build(analyzer, [src], out)
    assert result.identities == 2 and result.shards_computed == 0


def _can_mount_tmpfs(target: Path) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    probe = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(target)], capture_output=True)
    if probe.returncode != 0:
        return False
    subprocess.run(["umount", str(target)], check=True)
    return True


def test_real_full_disk_exits_1_with_the_folder_named(tmp_path):
    """On a real 200 KB tmpfs (needs root and mount rights: skipped elsewhere, where the test above stands)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _can_mount_tmpfs(disk):
        pytest.skip("cannot mount a tmpfs here (not root, or no mount rights)")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(disk)], check=True)
    try:
        src = _people(tmp_path / "photos")
        out = disk / "ds"
        result = CliRunner().invoke(
            app, ["-q", "build-dataset", str(src), "--out", str(out), "--workers", "1", "--labels", "folders"]
        )
        assert result.exit_code == 1, result.output
        assert "no space left on the device" in result.output and str(out) in result.output
        assert "Traceback" not in result.output
        assert not list(out.rglob(".tmp-*"))
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# ---------------------------------------------------------------------------------------------- odd inputs
def test_fifos_and_broken_links_are_failures_not_hangs(analyzer, tmp_path):
    src = _people(tmp_path / "photos")
    os.mkfifo(src / "obama" / "pipe.jpg")
    (src / "obama" / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    (src / "obama" / "loop.jpg").symlink_to("loop.jpg")
    os.mkfifo(tmp_path / "direct.jpg")
    start = time.perf_counter()
    result = _build(analyzer, [src, tmp_path / "direct.jpg"], tmp_path / "ds")
    assert time.perf_counter() - start < 60
    failures = _failures(tmp_path / "ds")
    reasons = {Path(k).name: f["reason"] for k, f in failures.items() if f["stage"] == "read"}
    assert set(reasons) == {"pipe.jpg", "dangling.jpg", "loop.jpg", "direct.jpg"}
    assert "named pipe" in reasons["pipe.jpg"] and "named pipe" in reasons["direct.jpg"]
    assert "dangling" in reasons["dangling.jpg"] and "loop" in reasons["loop.jpg"]
    assert result.identities == 2


@pytest.mark.parametrize("name", ["shard.tar", "list.csv", "list.parquet"])
def test_a_fifo_given_as_archive_or_list_is_refused_at_once(analyzer, tmp_path, name):
    os.mkfifo(tmp_path / name)
    start = time.perf_counter()
    with pytest.raises(DatasetError, match="named pipe"):
        _build(analyzer, [tmp_path / name], tmp_path / "ds")
    assert time.perf_counter() - start < 10


def _tar_with_duplicates(path: Path) -> None:
    """obama/a.jpg stored twice (two different photos), plus two more photos of each person."""
    photos = sorted((IDS / "obama").glob("*.jpg"))[:3] + sorted((IDS / "guido_van_rossum").glob("*.jpg"))[:3]
    with tarfile.open(path, "w") as tar:
        tar.add(photos[0], arcname="obama/a.jpg")
        tar.add(photos[1], arcname="obama/a.jpg")  # same member name, different photo
        tar.add(photos[2], arcname="obama/c.jpg")
        for i, photo in enumerate(photos[3:]):
            tar.add(photo, arcname=f"guido/{i}.jpg")


def test_duplicate_tar_member_names_are_both_kept(analyzer, tmp_path):
    tar = tmp_path / "people.tar"
    _tar_with_duplicates(tar)
    from hifi_portrait.data.inputs import enumerate_inputs, read_item_bytes

    items, _ = enumerate_inputs([tar], labels="folders")
    keys = [i.key for i in items if i.member == "obama/a.jpg"]
    assert keys == [f"{tar}::obama/a.jpg", f"{tar}::obama/a.jpg#2"]
    first, second = (read_item_bytes(i) for i in items if i.member == "obama/a.jpg")
    assert first != second  # each key reads its own copy
    out = tmp_path / "ds"
    _build(analyzer, [tar], out)
    used = set(_failures(out))
    for line in (out / "identities.jsonl").read_text().splitlines():
        for sample in json.loads(line)["samples"]:
            meta = json.loads(_sample_json(out, json.loads(line)["shard"], sample["sample"]))
            used.add(meta["source"])
    assert set(keys) <= used  # each copy is in the dataset or in failures.jsonl


def _sample_json(out: Path, shard: str, sample: str) -> bytes:
    with tarfile.open(out / shard) as tar:
        return tar.extractfile(f"{sample}.json").read()


# ---------------------------------------------------------------------------------------------- output
@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_output_files_honour_the_umask(analyzer, tmp_path, umask):
    src = _people(tmp_path / "photos")
    out = tmp_path / "ds"
    old = os.umask(umask)
    try:
        _build(analyzer, [src], out)
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) >= 5
    modes = {stat.S_IMODE(p.stat().st_mode) for p in files}
    assert modes == {0o666 & ~umask}, {oct(m) for m in modes}


@pytest.mark.parametrize("where", ["file-in-the-way", "under-a-file", "proc"])
def test_an_output_folder_that_cannot_be_written_exits_2(tmp_path, where):
    (tmp_path / "file.txt").write_text("x")
    out = {
        "file-in-the-way": tmp_path / "file.txt",
        "under-a-file": tmp_path / "file.txt" / "ds",
        "proc": Path("/proc/hifi-portrait-dataset"),
    }[where]
    result = CliRunner().invoke(app, ["-q", "build-dataset", str(DATA / "obama.jpg"), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert str(out) in result.output and "Traceback" not in result.output
