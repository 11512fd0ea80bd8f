"""``hifi-portrait landmarks`` end to end on the bundled photos (face analysis included)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from hifi_portrait.cli.main import app

DATA = Path(__file__).resolve().parents[1] / "data"
runner = CliRunner()


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("landmarks")
    args = [
        "landmarks",
        str(DATA / "obama.jpg"),
        str(DATA / "obama2.jpg"),
        "--yaw",
        "20",
        "--pitch",
        "-5",
        "--expression",
        "smile:0.5",
        "--blendshape",
        "jawOpen=0.3",
        "--size",
        "320x400",
        "--style",
        "mediapipe",
        "--sweep",
        "yaw",
        "--sweep-steps",
        "3",
        "--out",
        str(out),
    ]
    result = runner.invoke(app, args)
    return result, out


def test_writes_map_overlay_sweep_and_json(first_run):
    result, out = first_run
    assert result.exit_code == 0, result.output
    cond = np.asarray(Image.open(out / "landmarks_mediapipe.png"))
    assert cond.shape == (400, 320, 3) and cond.max() > 0
    assert np.asarray(Image.open(out / "overlay.png")).shape == (400, 320, 3)
    grid = np.asarray(Image.open(out / "sweep_yaw.png"))
    assert grid.shape[1] == 3 * round(320 * 256 / 400) and grid.shape[0] == 256
    info = json.loads((out / "landmarks.json").read_text())
    assert info["pose"]["yaw"] == 20 and info["pose"]["pitch"] == -5
    assert info["blendshapes"]["jawOpen"] == 0.3 and info["blendshapes"]["mouthSmileLeft"] == pytest.approx(0.4)
    assert np.array(info["landmarks"]).shape == (478, 3)
    assert len(info["references"]) == 2


def test_driver_and_saved_shape(first_run, tmp_path):
    _, first = first_run
    out = tmp_path / "driven"
    args = [
        "landmarks",
        str(first / "identity_shape.npz"),
        "--driver",
        str(DATA / "biden.jpg"),
        "--size",
        "256x256",
        "--style",
        "instantid",
        "--out",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    info = json.loads((out / "landmarks.json").read_text())
    from hifi_portrait.face import FaceAnalyzer

    biden = FaceAnalyzer().analyze(DATA / "biden.jpg")
    assert info["pose"]["yaw"] == pytest.approx(biden.pose.yaw, abs=1e-3)
    assert info["pose"]["roll"] == pytest.approx(biden.pose.roll, abs=1e-3)
    assert (out / "landmarks_instantid.png").is_file()


def test_any_blendshape_target_from_text_and_json_reads_back(first_run, tmp_path):
    """``--expression NAME=SCORE,...`` and ``--blendshapes FILE.json``: the written landmarks are the library's for
    that target, and mediapipe's blendshape model reads every asked score clearly above the neutral face's."""
    from hifi_portrait.face.blendshapes import BlendshapeReader
    from hifi_portrait.landmarks import IdentityShape, generate_landmarks, make_target

    _, first = first_run
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({"eyeBlinkLeft": 0.9, "eyeBlinkRight": 0.9, "jawOpen": 0.4}))
    out = tmp_path / "any"
    args = ["landmarks", str(first / "identity_shape.npz"), "--blendshapes", str(scores)]
    args += ["--expression", "jawOpen=0.1,mouthSmileLeft=0.6,mouthSmileRight=0.6", "--out", str(out)]
    args += ["--expression-model", "fitted"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    info = json.loads((out / "landmarks.json").read_text())
    assert info["expression_model"] == "fitted"
    asked = {"eyeBlinkLeft": 0.9, "eyeBlinkRight": 0.9, "jawOpen": 0.4, "mouthSmileLeft": 0.6, "mouthSmileRight": 0.6}
    assert info["blendshapes"] == pytest.approx(asked)  # the file's scores are set on top of --expression
    shape = IdentityShape.load(first / "identity_shape.npz")
    shape = IdentityShape(shape.points, shape.weights, shape.residuals, shape.sources, "fitted")
    same = generate_landmarks(shape, make_target(blendshapes=asked))
    np.testing.assert_allclose(np.array(info["landmarks"]), same.landmarks, atol=2e-3)
    reader = BlendshapeReader()
    read = reader.read_dict(np.array(info["landmarks"]))
    neutral = reader.read_dict(generate_landmarks(shape, make_target()).landmarks)
    for name in asked:
        assert read[name] > neutral[name] + 0.15, (name, asked[name], read[name], neutral[name])


def test_driver_without_a_face_fails_with_exit_1(first_run, tmp_path):
    _, first = first_run
    blank = tmp_path / "wall.png"
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(blank)
    result = runner.invoke(
        app, ["landmarks", str(first / "identity_shape.npz"), "--driver", str(blank), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    assert "no face" in result.output and "wall.png" in result.output


def test_no_usable_reference_fails_with_exit_1(tmp_path):
    blank = tmp_path / "wall.png"
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(blank)
    result = runner.invoke(app, ["landmarks", str(blank), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "none of the 1 reference photo" in result.output


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--expression", "grin"], "unknown expression preset"),
        (["--blendshape", "jawopen=0.2"], "jawOpen"),
        (["--blendshape", "jawOpen"], "NAME=VALUE"),
        (["--yaw", "120"], "outside the supported range"),
        (["--style", "canny"], "--style"),
        (["--size", "big"], "WIDTHxHEIGHT"),
        (["--box", "1,2,3"], "--box"),
        (["--expression", "jawOpen=wide"], "NAME=SCORE"),
        (["--expression", "smile:0.5,mouthSmile=0.2"], "unknown blendshape"),
        (["--blendshapes", str(DATA / "hair_regions.json")], "expected a JSON object of blendshape scores"),
        (["--blendshapes", str(DATA / "obama.jpg")], "not a readable JSON file"),
        (["--expression-model", "learned"], "--expression-model"),
    ],
)
def test_bad_options_exit_2_before_any_analysis(tmp_path, option, message):
    result = runner.invoke(app, ["landmarks", str(DATA / "obama.jpg"), "--out", str(tmp_path / "o"), *option])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "o").exists()


def test_missing_references_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["landmarks", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
