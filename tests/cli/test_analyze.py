"""``hifi-portrait analyze``: outputs, report, skipped files, outliers, exit codes, safe output names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from hifi_portrait.cli.analyze import output_stem
from hifi_portrait.cli.common import safe_child
from hifi_portrait.cli.main import app
from hifi_portrait.errors import ConfigError

DATA = Path(__file__).resolve().parents[1] / "data"
runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, ["--quiet", "analyze", *args])


def test_readme_command_on_three_photos(tmp_path):
    out = tmp_path / "analysis"
    result = _run(*(str(DATA / n) for n in ("obama.jpg", "obama2.jpg", "obama3.jpg")), "--out", str(out))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert [Path(f["source"]).name for f in report["faces"]] == ["obama.jpg", "obama2.jpg", "obama3.jpg"]
    assert report["skipped"] == [] and report["outliers"] == []
    sim = np.array(report["similarity"])
    assert sim.shape == (3, 3) and sim[~np.eye(3, dtype=bool)].min() > report["same_person_threshold"]
    for face in report["faces"]:
        folder = out / face["folder"]
        for name in ("arcface.png", "encoder.png", "mask.png", "overlay.png", "analysis.json", "analysis.npz"):
            assert (folder / name).is_file(), folder / name
        assert Image.open(folder / "arcface.png").size == (112, 112)
        # the person matte of the whole photo and the matted crop the image encoder sees
        photo = Image.open(DATA / Path(face["source"]).name)
        matte = np.asarray(Image.open(folder / "matte.png"))
        assert matte.shape == (photo.height, photo.width) and matte[:8, :8].max() < 26 and matte.max() == 255
        matted = np.asarray(Image.open(folder / "composited.png"))
        assert matted.shape == (512, 512, 3) and (matted[:16, :16] == 127).all()
        assert 0 < face["quality"]["total"] <= 1 and set(face["pose"]) == {"yaw", "pitch", "roll"}
    assert Image.open(out / "contact_sheet.png").width >= 3 * 200
    from hifi_portrait.face import FaceAnalysis, FaceSet

    assert len(FaceSet.load(out / "faceset")) == 3
    assert FaceAnalysis.load(out / "obama2" / "analysis").source.endswith("obama2.jpg")
    assert report["mask_method"] == "selfie-matte"


def test_landmark_hull_mask_option(tmp_path):
    out = tmp_path / "hull"
    result = _run(str(DATA / "obama.jpg"), "--mask", "landmark-hull", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert json.loads((out / "report.json").read_text())["mask_method"] == "landmark-hull"
    assert (out / "obama" / "composited.png").is_file() and not (out / "obama" / "matte.png").exists()
    bad = _run(str(DATA / "obama.jpg"), "--mask", "grabcut", "--out", str(out))
    assert bad.exit_code == 2 and "landmark-hull" in bad.output


def test_folder_with_good_and_bad_files(tmp_path):
    import skimage.data

    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(DATA / "obama.jpg", photos / "a_good.jpg")
    shutil.copy(DATA / "obama2.jpg", photos / "b_good.jpg")
    (photos / "c_empty.jpg").write_bytes(b"")
    (photos / "d_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg" * 10)
    (photos / "e_notes.txt").write_text("not an image")
    Image.fromarray(skimage.data.coffee()).save(photos / "f_noface.png")
    data = (DATA / "obama3.jpg").read_bytes()
    (photos / "g_truncated.jpg").write_bytes(data[: len(data) // 3])
    out = tmp_path / "out"
    result = _run(str(photos), "--out", str(out))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert sorted(Path(f["source"]).name for f in report["faces"]) == ["a_good.jpg", "b_good.jpg"]
    skipped = {Path(s["file"]).name: s for s in report["skipped"]}
    assert set(skipped) == {"c_empty.jpg", "d_corrupt.jpg", "e_notes.txt", "f_noface.png", "g_truncated.jpg"}
    assert skipped["f_noface.png"]["error"] == "FaceNotFoundError"
    assert skipped["c_empty.jpg"]["error"] == "ImageLoadError" and "0 bytes" in skipped["c_empty.jpg"]["reason"]
    assert "truncated" in skipped["g_truncated.jpg"]["reason"]


def test_nothing_usable_exits_1_with_a_message(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "notes.txt").write_text("hello")
    out = tmp_path / "out"
    result = _run(str(bad), str(tmp_path / "missing.jpg"), "--out", str(out))
    assert result.exit_code == 1
    assert "no usable face" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["faces"] == [] and len(report["skipped"]) == 3


def test_outlier_reported_and_dropped(tmp_path):
    out = tmp_path / "out"
    names = ("obama.jpg", "obama2.jpg", "obama_partial_face.jpg", "biden.jpg")
    result = _run(*(str(DATA / n) for n in names), "--out", str(out), "--drop-outliers", "--policy", "error")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert [Path(p).name for p in report["outliers"]] == ["biden.jpg"]
    assert [Path(p).name for p in report["dropped"]] == ["biden.jpg"]
    assert [f["outlier"] for f in report["faces"]] == [False, False, False, True]
    from hifi_portrait.face import FaceSet

    kept = FaceSet.load(out / "faceset")
    assert [Path(s).name for s in kept.sources] == ["obama.jpg", "obama2.jpg", "obama_partial_face.jpg"]


def test_bad_options_exit_codes(tmp_path):
    result = _run(str(DATA / "obama.jpg"), "--out", str(tmp_path / "o1"), "--policy", "smallest")
    assert result.exit_code == 2 and "--policy" in result.output
    result = _run(str(DATA / "obama.jpg"), "--out", str(tmp_path / "o2"), "--insightface", str(tmp_path / "none"))
    assert result.exit_code == 3 and "insightface model folder" in result.output


def test_output_names_stay_inside_out(tmp_path):
    used: set[str] = set()
    names = [output_stem(Path(p), used) for p in ("../../etc/x y?.jpg", "a/x y?.png", ".hidden.jpg", "faceset.jpg")]
    assert names == ["x_y", "x_y_1", "hidden", "faceset_1"]
    for name in names:
        assert safe_child(tmp_path, name).parent == tmp_path.resolve()
    with pytest.raises(ConfigError):
        safe_child(tmp_path, "..")
