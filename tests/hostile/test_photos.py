"""Bad-input corpus, photos: every hostile file gives a typed error, a documented skip or a correct result.

Within 10 s each, without a traceback, with bounded memory. Cases are generated here (photo_cases.py), from the
bundled photos or from nothing. Covered: ``load_image`` (truncated, bombs, non-images, odd modes, float TIFF with
inf/NaN, multi-page, FIFOs and links), faces turned by 90/180/270 degrees (analysed upright with the true roll, or
refused), and ``hifi-portrait analyze`` (folder entries that are not files, unreadable files, bad options, an
output folder that cannot be written).
"""

from __future__ import annotations

import builtins
import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from photo_cases import DATA, encode, load_image_cases, multipage, photo
from PIL import Image
from typer.testing import CliRunner

from hifi_portrait.cli.main import app
from hifi_portrait.errors import ImageLoadError, UnusableFaceError
from hifi_portrait.utils.image_io import count_frames, load_image

SECONDS = 10.0  # the longest any single bad input may take
CASES = load_image_cases()
runner = CliRunner()


@pytest.fixture(scope="module")
def analyzer():
    from hifi_portrait.face import FaceAnalyzer

    return FaceAnalyzer()


@pytest.mark.parametrize("make, expect", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_load_image_corpus(tmp_path, make, expect):
    source = make(tmp_path)
    start = time.perf_counter()
    kind, what = expect
    if kind == "error":
        with pytest.raises(ImageLoadError, match=what) as info:
            load_image(source)
        message = str(info.value)
        assert isinstance(source, bytes) or Path(source).name in message  # the message names the file
        assert "Traceback" not in message
    else:
        assert what(load_image(source))
    assert time.perf_counter() - start < SECONDS


def test_multi_page_files_say_how_many_pages(tmp_path):
    for fmt, name in (("TIFF", "pages.tif"), ("GIF", "anim.gif")):
        path = tmp_path / name
        path.write_bytes(multipage(fmt, pages=3))
        assert count_frames(path) == 3
    (tmp_path / "one.png").write_bytes(encode(photo(), "PNG"))
    assert count_frames(tmp_path / "one.png") == 1


def test_bombs_are_refused_with_bounded_memory(tmp_path):
    """Every size-claiming file is refused from its header in a process limited to 1 GB of address space."""
    from photo_cases import jpeg_claiming, png_claiming

    files = {
        "bomb.png": png_claiming(60000, 60000),
        "bomb.jpg": jpeg_claiming(60000, 60000),
        "claims.jpg": jpeg_claiming(6000, 6000),
        "strip.png": png_claiming(400_000_000, 1),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    script = textwrap.dedent(
        f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from hifi_portrait.errors import ImageLoadError
        from hifi_portrait.utils.image_io import load_image
        for name in {sorted(files)!r}:
            try:
                load_image({str(tmp_path)!r} + "/" + name)
            except ImageLoadError as exc:
                print("refused", name)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(line.split()[1] for line in done.stdout.split("\n") if line) == sorted(files)


# ---------------------------------------------------------------------------------------------- turned faces
UPRIGHT = {}


def _upright(analyzer, name):
    if name not in UPRIGHT:
        UPRIGHT[name] = analyzer.analyze(load_image(DATA / name), source=name)
    return UPRIGHT[name]


def _wrap(angle: float) -> float:
    return (angle + 180.0) % 360.0 - 180.0


@pytest.mark.parametrize("turns", [1, 2, 3], ids=["90ccw", "180", "90cw"])
@pytest.mark.parametrize("name", ["obama.jpg", "obama2.jpg", "biden.jpg", "astronaut.jpg"])
def test_turned_face_is_analysed_upright_with_its_true_roll(analyzer, name, turns):
    """A photo turned by 90/180/270 degrees: true roll, same identity, same crop -- or a clear refusal."""
    upright = _upright(analyzer, name)
    image = np.ascontiguousarray(np.rot90(load_image(DATA / name), turns))
    start = time.perf_counter()
    try:
        turned = analyzer.analyze(image, source=name)
    except UnusableFaceError as exc:  # a refusal is allowed, with a reason; a wrong pose is not
        assert "turned" in str(exc) or "rotate" in str(exc)
        return
    assert time.perf_counter() - start < SECONDS
    assert abs(_wrap(turned.pose.roll - (upright.pose.roll + 90 * turns))) < 12, turned.pose
    assert float(turned.identity @ upright.identity) > 0.97  # the upright face was embedded, not a sideways one
    assert np.abs(turned.arcface_crop.astype(int) - upright.arcface_crop).mean() < 12  # an upright crop
    height, width = image.shape[:2]
    assert turned.image_size == (width, height)
    # geometry is in the turned photo's pixels: the keypoints align the photo onto the same upright crop
    from hifi_portrait.face.alignment import alignment_affine, warp

    recrop = warp(image, alignment_affine(turned.keypoints, 112), 112)
    assert np.abs(recrop.astype(int) - turned.arcface_crop).mean() < 3
    x1, y1, x2, y2 = turned.bbox
    nose = turned.landmarks[1, :2]
    assert x1 < nose[0] < x2 and y1 < nose[1] < y2


def test_turned_face_with_orientation_check_off_still_never_gives_a_wrong_roll(analyzer):
    from hifi_portrait.face import FaceAnalyzer

    fast = FaceAnalyzer(check_orientation=False)
    upright = _upright(analyzer, "obama.jpg")
    image = np.ascontiguousarray(np.rot90(load_image(DATA / "obama.jpg"), 1))
    result = fast.analyze(image)
    assert abs(_wrap(result.pose.roll - (upright.pose.roll + 90))) < 12


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.zeros((64, 64, 3), np.uint8),
        lambda: np.full((300, 300, 3), 255, np.uint8),
        lambda: np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8),
        lambda: np.zeros((1, 1, 3), np.uint8),
        lambda: np.zeros((4000, 3, 3), np.uint8),
    ],
    ids=["black", "white", "noise", "one-pixel", "sliver"],
)
def test_faceless_images_are_a_typed_error(analyzer, make):
    from hifi_portrait.errors import FaceNotFoundError

    start = time.perf_counter()
    with pytest.raises((FaceNotFoundError, UnusableFaceError)):
        analyzer.analyze(make())
    assert time.perf_counter() - start < SECONDS


# ---------------------------------------------------------------------------------------------- the CLI
def _analyze(*args: str):
    result = runner.invoke(app, ["--quiet", "analyze", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result


def _unreadable(path: Path, monkeypatch) -> None:
    """Make ``path`` unreadable: ``chmod 000``, and as root (whom permission bits do not stop) refuse opening it
    exactly as the kernel would for another user: ``PermissionError`` from open / os.open / listing."""
    path.chmod(0)
    if os.geteuid() != 0:
        return
    denied = os.path.realpath(path)

    def guard(real):
        def wrapper(target, *args, **kwargs):
            if isinstance(target, str | bytes | os.PathLike) and os.path.realpath(os.fsdecode(target)) == denied:
                raise PermissionError(13, "Permission denied", os.fsdecode(target))
            return real(target, *args, **kwargs)

        return wrapper

    monkeypatch.setattr(builtins, "open", guard(builtins.open))
    monkeypatch.setattr(os, "open", guard(os.open))
    monkeypatch.setattr(os, "listdir", guard(os.listdir))
    monkeypatch.setattr(os, "scandir", guard(os.scandir))


def test_folder_entries_that_are_not_files_are_listed_as_skipped(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes((DATA / "obama.jpg").read_bytes())
    (photos / "b.jpg").write_bytes((DATA / "obama2.jpg").read_bytes())
    os.mkfifo(photos / "pipe.jpg")
    (photos / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    (photos / "loop.jpg").symlink_to("loop.jpg")
    (photos / "sub").mkdir()
    (photos / ".hidden.jpg").write_bytes(b"")
    out = tmp_path / "out"
    start = time.perf_counter()
    result = _analyze(str(photos), "--out", str(out))
    assert time.perf_counter() - start < 60  # includes loading the models once
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert sorted(Path(f["source"]).name for f in report["faces"]) == ["a.jpg", "b.jpg"]
    skipped = {Path(s["file"]).name: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"pipe.jpg", "dangling.jpg", "loop.jpg", "sub"}  # hidden files are not inputs
    assert "named pipe" in skipped["pipe.jpg"] and "dangling" in skipped["dangling.jpg"]
    assert "loop" in skipped["loop.jpg"] and "sub-folder" in skipped["sub"]


def test_fifo_and_links_on_the_command_line_are_skipped(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    out = tmp_path / "out"
    start = time.perf_counter()
    result = _analyze(
        str(tmp_path / "pipe.jpg"), str(tmp_path / "dangling.jpg"), str(DATA / "obama.jpg"), "-o", str(out)
    )
    assert time.perf_counter() - start < 60 and result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert [Path(s["file"]).name for s in report["skipped"]] == ["pipe.jpg", "dangling.jpg"]


def test_an_unreadable_file_is_skipped_and_the_batch_goes_on(tmp_path, monkeypatch):
    locked = tmp_path / "locked.jpg"
    locked.write_bytes((DATA / "obama3.jpg").read_bytes())
    _unreadable(locked, monkeypatch)
    out = tmp_path / "out"
    result = _analyze(str(DATA / "obama.jpg"), str(locked), str(DATA / "obama2.jpg"), "--out", str(out))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert [Path(f["source"]).name for f in report["faces"]] == ["obama.jpg", "obama2.jpg"]
    (entry,) = report["skipped"]
    assert Path(entry["file"]).name == "locked.jpg" and "Permission denied" in entry["reason"]


def test_an_unreadable_folder_is_skipped(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "x.jpg").write_bytes((DATA / "obama3.jpg").read_bytes())
    _unreadable(locked, monkeypatch)
    out = tmp_path / "out"
    result = _analyze(str(locked), str(DATA / "obama.jpg"), "--out", str(out))
    locked.chmod(stat.S_IRWXU)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert [Path(s["file"]).name for s in report["skipped"]] == ["locked"]
    assert "cannot be listed" in report["skipped"][0]["reason"]


def test_multi_page_tiff_is_analysed_and_the_report_says_so(tmp_path):
    frames = [Image.open(DATA / "obama.jpg").convert("RGB"), Image.open(DATA / "biden.jpg").convert("RGB")]
    path = tmp_path / "two.tif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    out = tmp_path / "out"
    result = _analyze(str(path), "--out", str(out))
    assert result.exit_code == 0, result.output
    (face,) = json.loads((out / "report.json").read_text())["faces"]
    assert face["note"] == "2 pages or frames: only the first was analysed"


@pytest.mark.parametrize(
    "options, code, message",
    [
        (["--face-landmarker", "/etc/passwd"], 3, "not a face_landmarker.task"),
        (["--face-landmarker", "{tmp}/none.task"], 3, "does not exist"),
        (["--face-landmarker", "{tmp}/empty.zip"], 3, "lacks face_detector.tflite"),
        (["--face-landmarker", "{tmp}"], 3, "is a folder"),
        (["--min-face-px", "nan"], 2, "min_face_px"),
        (["--min-face-px", "-1"], 2, "min_face_px"),
        (["--min-face-px", "inf"], 2, "min_face_px"),
        (["--min-sharpness", "nan"], 2, "min_sharpness"),
        (["--min-sharpness", "-5"], 2, "min_sharpness"),
        (["--policy", "-1"], 2, "--policy"),
        (["--policy", "1.5"], 2, "--policy"),
        (["--out", "{tmp}/file.txt/sub"], 2, "cannot write there"),
        (["--out", "{tmp}/file.txt"], 2, "cannot write there"),
        (["--out", "/proc/hifi-portrait-out"], 2, "cannot write there"),
    ],
    ids=lambda v: "_".join(v) if isinstance(v, list) else str(v),
)
def test_bad_options_are_typed_errors_with_exit_codes(tmp_path, options, code, message):
    import zipfile

    (tmp_path / "file.txt").write_text("in the way")
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as bundle:
        bundle.writestr("readme.txt", "no models here")
    args = [str(DATA / "obama.jpg")] + [o.replace("{tmp}", str(tmp_path)) for o in options]
    if "--out" not in options:
        args += ["--out", str(tmp_path / "out")]
    result = _analyze(*args)
    assert result.exit_code == code, result.output
    assert message in result.output


def test_read_only_out_folder_is_a_typed_error(tmp_path, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.geteuid() == 0:  # root writes anywhere: refuse creating files there as the kernel would for a user
        import tempfile

        real = tempfile.TemporaryFile

        def refuse(*args, dir=None, **kwargs):
            if dir is not None and Path(dir).resolve() == out.resolve():
                raise PermissionError(13, "Permission denied", str(dir))
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    result = _analyze(str(DATA / "obama.jpg"), "--out", str(out))
    out.chmod(stat.S_IRWXU)
    assert result.exit_code == 2 and "Permission denied" in result.output and str(out) in result.output


def test_disk_full_while_writing_is_a_typed_error_naming_the_folder(tmp_path, monkeypatch):
    import errno

    from PIL import Image as PILImage

    real_save = PILImage.Image.save

    def full(self, fp, *args, **kwargs):
        if "encoder.png" in str(fp):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(PILImage.Image, "save", full)
    out = tmp_path / "out"
    result = _analyze(str(DATA / "obama.jpg"), "--out", str(out))
    assert result.exit_code == 1
    assert "no space left on the device" in result.output and str(out) in result.output
