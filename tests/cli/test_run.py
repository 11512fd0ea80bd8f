"""The README's main job: ``hifi-portrait run`` on the bundled photos of one person plus another person."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from hifi_portrait.cli.main import app

DATA = Path(__file__).resolve().parents[1] / "data"


def test_run_writes_analysis_control_grids_and_weights_notice(tmp_path, monkeypatch):
    for name in ("HIFI_PORTRAIT_BASE", "HIFI_PORTRAIT_ADAPTER", "HIFI_PORTRAIT_IMAGE_ENCODER"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "results"
    refs = [str(DATA / n) for n in ("obama.jpg", "obama2.jpg", "biden.jpg")]
    result = CliRunner().invoke(app, ["run", *refs, "--out", str(out), "--size", "512x640"])
    assert result.exit_code == 0, result.output

    report = json.loads((out / "analysis" / "report.json").read_text())
    assert [Path(s).name for s in report["dropped"]] == ["biden.jpg"]  # the other person is left out
    assert (out / "analysis" / "contact_sheet.png").is_file()

    pose = np.asarray(Image.open(out / "control" / "pose_grid.png"))
    expr = np.asarray(Image.open(out / "control" / "expression_grid.png"))
    assert pose.shape[0] < expr.shape[0] and pose.shape[1] == expr.shape[1]  # 3 pitch rows vs 8 expression rows
    assert pose.std() > 10 and expr.std() > 10  # something is drawn
    target = np.asarray(Image.open(out / "control" / "left_smile_hifi.png"))
    assert target.shape == (640, 512, 3)

    notice = (out / "portraits" / "MISSING_WEIGHTS.txt").read_text()
    assert "SDXL base" in notice and "adapter" in notice and "CLIP vision encoder" in notice


def test_run_with_incomplete_weights_exits_3_naming_the_files(tmp_path):
    out = tmp_path / "results"
    missing = tmp_path / "nowhere.safetensors"
    result = CliRunner().invoke(app, ["run", str(DATA / "obama.jpg"), "--out", str(out), "--adapter", str(missing)])
    assert result.exit_code == 3, result.output
    assert "nowhere.safetensors" in result.output and "SDXL base" in result.output


def test_run_without_usable_reference_exits_1(tmp_path):
    bad = tmp_path / "empty.jpg"
    bad.write_bytes(b"")
    result = CliRunner().invoke(app, ["run", str(bad), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert "no usable face" in result.output


def test_run_generates_a_portrait_per_target_with_weights(tmp_path, model_files, monkeypatch):
    """With (tiny random) model files the main job also writes one portrait per default target."""
    from hifi_portrait.cli.run import DEFAULT_TARGETS

    monkeypatch.setenv("HIFI_PORTRAIT_IMAGE_ENCODER", str(model_files / "clip"))  # the env route for one of them
    out = tmp_path / "results"
    args = [
        "run",
        *(str(DATA / n) for n in ("obama.jpg", "obama2.jpg")),
        "--out",
        str(out),
        "--size",
        "64x64",
        "--steps",
        "2",
        "--base",
        str(model_files / "sdxl"),
        "--adapter",
        str(model_files / "adapter.safetensors"),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    portraits = {p.stem: np.asarray(Image.open(p)) for p in (out / "portraits").glob("*.png")}
    assert set(portraits) == {label for label, *_ in DEFAULT_TARGETS}
    assert all(p.shape == (64, 64, 3) for p in portraits.values())
    # the targets differ in pose and expression, so the portraits differ (slightly: the tiny adapter is random)
    assert not np.array_equal(portraits["frontal_neutral"], portraits["left_smile"])
    assert not (out / "portraits" / "MISSING_WEIGHTS.txt").exists()
