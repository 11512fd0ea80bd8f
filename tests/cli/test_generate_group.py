"""``hifi-portrait generate --person A/ --person B/ --layout auto`` on tiny random models and the bundled photos
(hifi-portrait adapter and InstantID mode), and the typed errors of bad combinations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from hifi_portrait.cli.main import app

torch.set_num_threads(1)
DATA = Path(__file__).resolve().parents[1] / "data"
runner = CliRunner()


@pytest.fixture(scope="module")
def people(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("people")
    (root / "obama").mkdir()
    for name in ("obama.jpg", "obama2.jpg"):
        shutil.copy(DATA / name, root / "obama" / name)
    return root / "obama", DATA / "biden.jpg"


def group_args(files: Path, out: Path, people) -> list[str]:
    return [
        "generate",
        "--person",
        str(people[0]),
        "--person",
        str(people[1]),
        "--base",
        str(files / "sdxl"),
        "--adapter",
        str(files / "adapter.safetensors"),
        "--image-encoder",
        str(files / "clip"),
        "--prompt",
        "two people",
        "--size",
        "128x64",
        "--steps",
        "2",
        "--out",
        str(out),
    ]


def _check_outputs(out: Path, n: int = 2) -> dict:
    portrait = np.asarray(Image.open(out / "portrait_0_0.png"))
    assert portrait.shape == (64, 128, 3)
    settings = json.loads((out / "settings.json").read_text())
    assert len(settings["people"]) == n and all(p["region_pixels"] > 0 for p in settings["people"])
    regions = np.asarray(Image.open(out / "regions.png"))
    colours = {tuple(c) for c in regions.reshape(-1, 3)} - {(0, 0, 0)}
    assert len(colours) == n  # one colour per person, disjoint by construction
    cond = np.asarray(Image.open(out / settings["landmark_map"]))
    for colour in colours:  # every person's face is on the map, inside its region
        inside = (regions == colour).all(2)
        assert (cond.max(2)[inside] > 0).sum() > 5
    return settings


def test_group_through_the_cli(model_files, people, tmp_path):
    args = group_args(model_files, tmp_path / "auto", people) + [
        "--layout",
        "auto",
        "--person-target",
        "yaw=20;expression=smile:0.6",
        "--person-target",
        "yaw=-25;size=0.8",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    settings = _check_outputs(tmp_path / "auto")
    assert [p["target"]["yaw"] for p in settings["people"]] == [20.0, -25.0]
    assert settings["people"][0]["target"]["blendshapes"]["mouthSmileLeft"] > 0
    a, b = (p["region_pixels"] for p in settings["people"])
    assert abs(b / a - 0.8**2) < 0.1  # relative size 0.8 -> region area ratio 0.64 (at 64 px, +-0.1)
    # explicit boxes
    boxed = runner.invoke(
        app, group_args(model_files, tmp_path / "boxes", people) + ["--layout", "4,8,40,44;76,12,108,44"]
    )
    assert boxed.exit_code == 0, boxed.output
    _check_outputs(tmp_path / "boxes")
    first = np.asarray(Image.open(tmp_path / "auto" / "portrait_0_0.png"))
    assert np.abs(np.asarray(Image.open(tmp_path / "boxes" / "portrait_0_0.png")).astype(int) - first).max() > 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--person", "{b}"], "2 or more --person"),  # replaced below: only one person
        (["{a_photo}"], "not as REFS"),
        (["--layout", "1,2,3"], "x1,y1,x2,y2"),
        (["--layout", "0,0,10,10"], "one box per person"),
        (["--layout", "0,0,10,10;0,0,500,10"], "inside the 128x64 canvas"),
        (["--person-target", "yaw=10"], "one per person"),
        (["--person-target", "yaw=10", "--person-target", "tilt=3"], "KEY=VALUE"),
        (["--person-target", "yaw=100", "--person-target", ""], "--person-target"),
        (["--driver", "{a_photo}"], "--driver is not available"),
        (["--sweep", "yaw"], "--sweep is not available"),
        (["--person", "{missing}"], "no such folder"),
        (["--layout", "0,0,60,60;60,0,120,60", "--person-target", "size=0.5", "--person-target", ""], "size="),
    ],
)
def test_bad_group_combinations_are_usage_errors(model_files, people, tmp_path, extra, message):
    args = group_args(model_files, tmp_path / "out", people)
    subs = {"{b}": str(people[1]), "{a_photo}": str(DATA / "obama.jpg"), "{missing}": str(tmp_path / "nope")}
    extra = [subs.get(e, e) for e in extra]
    if message == "2 or more --person":
        args = args[:1] + args[3:]  # drop the first --person: one person left
        extra = []
    result = runner.invoke(app, args + extra)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output


def test_layout_without_people_and_five_people_auto(model_files, people, tmp_path):
    one = runner.invoke(
        app,
        ["generate", str(DATA / "obama.jpg"), "--prompt", "x", "--out", str(tmp_path / "o"), "--layout", "auto"],
    )
    assert one.exit_code == 2 and "--person" in one.output
    five = group_args(model_files, tmp_path / "five", people) + ["--person", str(people[1])] * 3
    result = runner.invoke(app, five)
    assert result.exit_code == 2 and "2 to 4 people" in result.output
    none = runner.invoke(app, ["generate", "--prompt", "x", "--out", str(tmp_path / "n")])
    assert none.exit_code == 2 and "REFS" in none.output


def test_group_in_instantid_mode(model_files, instantid_files, fake_arcface, people, tmp_path):
    args = [
        "generate",
        "--person",
        str(people[0]),
        "--person",
        str(people[1]),
        "--base",
        str(model_files / "sdxl"),
        "--instantid",
        str(instantid_files / "InstantID" / "ip-adapter.safetensors"),
        "--identitynet",
        str(instantid_files / "InstantID" / "ControlNetModel"),
        "--insightface-dir",
        str(instantid_files / "antelopev2"),
        "--prompt",
        "two people",
        "--size",
        "128x64",
        "--steps",
        "2",
        "--out",
        str(tmp_path / "iid"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    settings = _check_outputs(tmp_path / "iid")
    assert settings["mode"] == "instantid" and settings["landmark_map"] == "landmarks_instantid.png"
