"""The public recipe end to end on tiny random models: ``generate --instantid DIR --controlnet openpose=DIR`` runs
InstantID's IdentityNet and an OpenPose ControlNet as one multi-ControlNet on our pipeline, both conditioned from
the same generated 3D target; sweeps write a contact sheet; bad recipe options get exit codes 2 and 3."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from hifi_portrait.cli.main import app

torch.set_num_threads(1)
DATA = Path(__file__).resolve().parents[1] / "data"
runner = CliRunner()


def recipe_args(model_files: Path, instantid_files: Path, out: Path, *extra: str) -> list[str]:
    return [
        "generate",
        str(DATA / "obama.jpg"),
        "--base",
        str(model_files / "sdxl"),
        "--instantid",
        str(instantid_files / "InstantID"),
        "--insightface-dir",
        str(instantid_files / "antelopev2"),
        "--controlnet",
        f"openpose={instantid_files / 'openpose'}",
        "--prompt",
        "a portrait photo",
        "--size",
        "128x128",
        "--steps",
        "2",
        "--out",
        str(out),
        *extra,
    ]


def portrait(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(int)


def test_recipe_runs_identitynet_and_openpose_from_one_target(model_files, instantid_files, fake_arcface, tmp_path):
    out = tmp_path / "recipe"
    extra = ["--yaw", "20", "--expression", "smile", "--pose-resolution", "0"]  # maps drawn at full size
    result = runner.invoke(app, recipe_args(model_files, instantid_files, out, *extra))
    assert result.exit_code == 0, result.output
    assert "openpose ControlNet" in result.output
    image = portrait(out / "portrait_0_0.png")
    assert image.shape == (128, 128, 3)
    settings = json.loads((out / "settings.json").read_text())
    assert settings["controlnets"] == [{"style": "openpose", "path": str(instantid_files / "openpose"), "scale": 0.4}]
    assert settings["identitynet"] == str(instantid_files / "InstantID" / "ControlNetModel")
    assert settings["target"]["yaw"] == 20 and settings["target"]["blendshapes"]["mouthSmileLeft"] > 0
    # both maps come from the same target: IdentityNet's eye discs sit on the OpenPose map's pupils (white)
    kps_map = np.asarray(Image.open(out / "landmarks_instantid.png"))
    pose_map = np.asarray(Image.open(out / "control_openpose.png"))
    for (x, y), color in zip(settings["keypoints"][:2], [(255, 0, 0), (0, 255, 0)], strict=True):
        assert tuple(kps_map[int(y), int(x)]) == color and tuple(pose_map[int(y), int(x)]) == (255, 255, 255)
    assert (np.all(pose_map == (255, 255, 255), axis=2)).sum() > 100  # the 70 face points

    # each ControlNet's scale acts: OpenPose off, or IdentityNet off, changes the portrait
    for extra in (["--controlnet-scale", "0"], ["--control-scale", "0"]):
        other = tmp_path / extra[0].strip("-")
        args = recipe_args(model_files, instantid_files, other, "--yaw", "20", "--expression", "smile", *extra)
        assert runner.invoke(app, args).exit_code == 0
        assert np.abs(portrait(other / "portrait_0_0.png") - image).max() > 0, extra
    # the OpenPose net reads the map: another expression (same pose) changes only that map, and the portrait
    laugh = tmp_path / "laugh"
    args = recipe_args(model_files, instantid_files, laugh, "--yaw", "20", "--expression", "laugh")
    assert runner.invoke(app, args + ["--control-scale", "0"]).exit_code == 0
    assert np.abs(
        portrait(laugh / "portrait_0_0.png") - portrait(tmp_path / "control-scale" / "portrait_0_0.png")
    ).max()


def test_multi_controlnet_gives_each_net_its_own_context(model_files, instantid_files):
    """IdentityNet cross-attends to the ID tokens, the OpenPose net to the text (InstantID's multi-ControlNet)."""
    from hifi_portrait.pipelines.model_files import load_instantid_pipeline
    from hifi_portrait.pipelines.multi_controlnet import MultiContextControlNetModel

    pipe = load_instantid_pipeline(
        model_files / "sdxl",
        instantid_files / "InstantID" / "ip-adapter.safetensors",
        instantid_files / "InstantID" / "ControlNetModel",
        controlnets=[instantid_files / "openpose"],
    )
    assert isinstance(pipe.controlnet, MultiContextControlNetModel) and pipe.controlnet_context == [
        "id_tokens",
        "text",
    ]
    calls = []
    for net in pipe.controlnet.nets:
        net.register_forward_hook(lambda m, args, kwargs, out: calls.append((args, kwargs)), with_kwargs=True)
    maps = [np.zeros((64, 64, 3), np.uint8)] * 2
    pipe("x", id_embeds=torch.randn(1, 512), image=maps, num_inference_steps=1, output_type="np")
    (args0, kw0), (args1, kw1) = calls
    assert args0[2].shape[1] == 4  # IdentityNet: the 4 ID tokens
    assert args1[2].shape[1] == pipe.tokenizer.model_max_length  # OpenPose net: the 77 text tokens

    # with a list each net reads its own states (residuals summed); with one tensor it is diffusers' class
    from diffusers.models import MultiControlNetModel

    sample, t, ids = args0[0], args0[1], args0[2]
    text, images, added = args1[2], [args0[3], args1[3]], kw0["added_cond_kwargs"]
    with torch.no_grad():
        d, m = pipe.controlnet(sample, t, [ids, text], images, [0.8, 0.4], added_cond_kwargs=added, return_dict=False)
        d0, m0 = pipe.controlnet.nets[0](sample, t, ids, images[0], 0.8, added_cond_kwargs=added, return_dict=False)
        d1, m1 = pipe.controlnet.nets[1](sample, t, text, images[1], 0.4, added_cond_kwargs=added, return_dict=False)
        torch.testing.assert_close(m, m0 + m1, rtol=0, atol=0)
        for a, b, c in zip(d, d0, d1, strict=True):
            torch.testing.assert_close(a, b + c, rtol=0, atol=0)
        plain = MultiControlNetModel(list(pipe.controlnet.nets))(
            sample, t, text, images, [0.8, 0.4], added_cond_kwargs=added, return_dict=False
        )
        same = pipe.controlnet(sample, t, text, images, [0.8, 0.4], added_cond_kwargs=added, return_dict=False)
        torch.testing.assert_close(same[1], plain[1], rtol=0, atol=0)


def test_sweep_writes_a_contact_sheet(model_files, instantid_files, fake_arcface, tmp_path):
    out = tmp_path / "yaw"
    extra = ["--sweep", "yaw", "--sweep-steps", "3", "--size", "64x64"]
    result = runner.invoke(app, recipe_args(model_files, instantid_files, out, *extra))
    assert result.exit_code == 0, result.output
    settings = json.loads((out / "settings.json").read_text())
    labels = [t["label"] for t in settings["targets"]]
    assert labels == ["yaw_-45", "yaw_+0", "yaw_+45"]
    assert [t["target"]["yaw"] for t in settings["targets"]] == [-45, 0, 45]
    sheet = np.asarray(Image.open(out / "sweep_yaw.png"))
    assert sheet.shape[1] >= 64 * 3 and sheet.shape[0] >= 3 * 64  # a column per target; portrait + 2 maps
    maps = [np.asarray(Image.open(out / f"{label}_control_openpose.png")) for label in labels]
    assert all(np.abs(a.astype(int) - b).max() > 0 for a, b in zip(maps, maps[1:], strict=False))
    portraits = [portrait(out / f"{label}_portrait_0_0.png") for label in labels]
    assert all(np.abs(a - b).max() > 0 for a, b in zip(portraits, portraits[1:], strict=False))


def test_sweep_targets():
    from hifi_portrait.cli.generate import sweep_targets
    from hifi_portrait.landmarks import PRESETS, make_target

    base = make_target(yaw=20, pitch=-5, expression="smile")
    assert sweep_targets(base, None, 5) == [("", base)]
    expressions = sweep_targets(base, "expression", 5)
    assert [label for label, _ in expressions] == [f"expression_{name}" for name in PRESETS]
    assert all(t.yaw == 20 and t.pitch == -5 for _, t in expressions)
    assert dict(expressions)["expression_eyes_closed"].blendshapes["eyeBlinkLeft"] == 1.0
    rolls = sweep_targets(base, "roll", 5)
    assert [t.roll for _, t in rolls] == [-20, -10, 0, 10, 20] and all(
        t.blendshapes == base.blendshapes for _, t in rolls
    )


def test_help_shows_the_recipe():
    result = runner.invoke(app, ["generate", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "--controlnet openpose=" in text and "--instantid InstantID/" in text and "docs/recipes.md" in text
    options = (
        "--controlnet-scale",
        "--control-scale",
        "--sweep",
        "--pose-shoulders",
        "--pose-thick",
        "--pose-resolution",
    )
    for option in options:
        assert option in text


def test_recipe_option_errors(model_files, instantid_files, tmp_path):
    args = recipe_args(model_files, instantid_files, tmp_path / "o")
    at = args.index("--controlnet") + 1

    def run(arguments):
        return runner.invoke(app, arguments)

    bad_style = run(args[:at] + [f"canny={instantid_files / 'openpose'}"] + args[at + 1 :])
    assert bad_style.exit_code == 2 and "STYLE=DIR" in bad_style.output
    missing = run(args[:at] + [f"openpose={tmp_path / 'nowhere'}"] + args[at + 1 :])
    assert missing.exit_code == 3 and "openpose ControlNet" in missing.output and "recipes.md" in missing.output
    pickled = tmp_path / "thibaud-like"  # a diffusers folder with only the pickle, as thibaud's repository has
    pickled.mkdir()
    shutil.copy(instantid_files / "openpose" / "config.json", pickled / "config.json")
    (pickled / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    only_bin = run(args[:at] + [f"openpose={pickled}"] + args[at + 1 :])
    assert only_bin.exit_code == 3 and "diffusion_pytorch_model.bin" in only_bin.output
    scales = run(args + ["--controlnet-scale", "0.1", "--controlnet-scale", "0.2"])
    assert scales.exit_code == 2 and "--controlnet-scale" in scales.output
    no_instantid = [a for a in args if a not in ("--instantid", str(instantid_files / "InstantID"))]
    assert run(no_instantid).exit_code == 2
    # InstantID's folder as downloaded (pickle only): told to convert it, nothing unpickled
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(instantid_files / "InstantID" / "ip-adapter.bin", raw / "ip-adapter.bin")
    unconverted = run([str(raw) if a == str(instantid_files / "InstantID") else a for a in args])
    assert unconverted.exit_code == 3 and "convert-instantid" in unconverted.output
    bad_sweep = run(args + ["--sweep", "zoom"])
    assert bad_sweep.exit_code == 2
    assert run(args + ["--pose-resolution", "10"]).exit_code == 2
