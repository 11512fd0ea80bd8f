"""``hifi-portrait generate`` end to end on a tiny random SDXL saved to disk, with the bundled photos; and the
missing-files explanation (exit code 3)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from hifi_portrait.cli.main import app

torch.set_num_threads(1)
DATA = Path(__file__).resolve().parents[1] / "data"
runner = CliRunner()


def base_args(files: Path, out: Path, photos=("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg")) -> list[str]:
    return [
        "generate",
        *(str(DATA / n) for n in photos),
        "--base",
        str(files / "sdxl"),
        "--adapter",
        str(files / "adapter.safetensors"),
        "--image-encoder",
        str(files / "clip"),
        "--prompt",
        "a portrait photo",
        "--size",
        "64x64",
        "--steps",
        "2",
        "--out",
        str(out),
    ]


def test_generate_end_to_end_on_bundled_photos(model_files, tmp_path):
    out = tmp_path / "run1"
    args = base_args(model_files, out) + [
        "--yaw",
        "20",
        "--expression",
        "smile:0.6",
        "--seed",
        "3",
        "--negative-prompt",
        "blurry",
        "--num-images",
        "2",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    portraits = [np.asarray(Image.open(out / f"portrait_3_{i}.png")) for i in range(2)]
    assert all(p.shape == (64, 64, 3) for p in portraits) and np.abs(portraits[0] - portraits[1].astype(int)).max() > 0
    cond = np.asarray(Image.open(out / "landmarks_hifi.png"))
    assert cond.shape == (64, 64, 3) and cond.max() > 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["target"]["yaw"] == 20 and settings["target"]["blendshapes"]["mouthSmileLeft"] > 0
    assert settings["size"] == [64, 64] and settings["steps"] == 2 and settings["seed"] == 3
    assert settings["outputs"] == ["portrait_3_0.png", "portrait_3_1.png"]
    used = {Path(r["source"]).name: r["used"] for r in settings["references"]}
    assert used == {"obama.jpg": True, "obama2.jpg": True, "obama3.jpg": True, "biden.jpg": False}  # biden dropped
    assert "biden.jpg" in result.output

    # same seed and settings -> same portrait; the target pose changes it
    again = runner.invoke(app, [a if a != str(out) else str(tmp_path / "run1b") for a in args])
    assert again.exit_code == 0, again.output
    for i in range(2):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "run1b" / f"portrait_3_{i}.png")), portraits[i])
    turned = runner.invoke(app, base_args(model_files, tmp_path / "run2") + ["--yaw", "-30", "--seed", "3"])
    assert turned.exit_code == 0, turned.output
    other = np.asarray(Image.open(tmp_path / "run2" / "portrait_3_0.png"))
    assert np.abs(other.astype(int) - portraits[0]).max() > 0


def test_missing_weights_explain_what_and_where(tmp_path):
    args = ["generate", str(DATA / "obama.jpg"), "--prompt", "x", "--out", str(tmp_path / "o")]
    result = runner.invoke(app, args, env={"HIFI_PORTRAIT_BASE": "", "HIFI_PORTRAIT_ADAPTER": ""})
    assert result.exit_code == 3
    text = " ".join(result.output.split())
    for needed in (
        "SDXL base: not given",
        "stabilityai/stable-diffusion-xl-base-1.0",
        "model_index.json",
        "adapter: not given",
        "hifi-portrait train",
        "CLIP vision encoder",
        "h94/IP-Adapter",
    ):
        assert needed in text, needed
    assert not (tmp_path / "o").exists()  # nothing analysed or written before the check


def test_incomplete_folders_and_bad_options(model_files, tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model_index.json").write_text("{}")
    args = [
        "generate",
        str(DATA / "obama.jpg"),
        "--prompt",
        "x",
        "--out",
        str(tmp_path / "o"),
        "--base",
        str(tmp_path / "half"),
        "--adapter",
        str(tmp_path / "adapter.bin"),
    ]
    result = runner.invoke(app, args)
    text = " ".join(result.output.split())
    assert result.exit_code == 3
    assert "lacks unet, vae, text_encoder" in text and "not a .safetensors file" in text
    assert "has no image_encoder/" in text
    bad = runner.invoke(app, base_args(model_files, tmp_path / "b") + ["--expression", "grin"])
    assert bad.exit_code == 2 and "grin" in bad.output
    odd = runner.invoke(app, base_args(model_files, tmp_path / "c")[:-4] + ["--size", "60x64", "--out", "x"])
    assert odd.exit_code == 2 and "multiples of 8" in odd.output


def test_lora_file_changes_the_portrait(model_files, tmp_path):
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from hifi_portrait.utils.testing import get_dummy_unet, randomize_

    unet = get_dummy_unet()
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    for name, module in unet.named_modules():
        if name.endswith("lora_B"):
            randomize_(module, seed=5, std=0.3)
    StableDiffusionXLPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(unet))
    lora_file = next((tmp_path / "lora").glob("*.safetensors"))
    args = base_args(model_files, tmp_path / "plain", photos=("obama2.jpg",))
    assert runner.invoke(app, args).exit_code == 0
    with_lora = base_args(model_files, tmp_path / "lora_out", photos=("obama2.jpg",)) + ["--lora", str(lora_file)]
    result = runner.invoke(app, with_lora)
    assert result.exit_code == 0, result.output
    a = np.asarray(Image.open(tmp_path / "plain" / "portrait_0_0.png")).astype(int)
    b = np.asarray(Image.open(tmp_path / "lora_out" / "portrait_0_0.png")).astype(int)
    assert np.abs(a - b).max() > 0
    assert json.loads((tmp_path / "lora_out" / "settings.json").read_text())["lora"] == [str(lora_file)]


def test_instantid_mode(model_files, instantid_files, fake_arcface, tmp_path):
    converted = instantid_files / "InstantID" / "ip-adapter.safetensors"
    args = [
        "generate",
        str(DATA / "obama.jpg"),
        str(DATA / "obama2.jpg"),
        "--base",
        str(model_files / "sdxl"),
        "--instantid",
        str(converted),
        "--identitynet",
        str(instantid_files / "InstantID" / "ControlNetModel"),
        "--insightface-dir",
        str(instantid_files / "antelopev2"),
        "--prompt",
        "a portrait photo",
        "--size",
        "64x64",
        "--steps",
        "2",
        "--yaw",
        "-20",
        "--out",
        str(tmp_path / "out"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert np.asarray(Image.open(tmp_path / "out" / "portrait_0_0.png")).shape == (64, 64, 3)
    kps = np.asarray(Image.open(tmp_path / "out" / "landmarks_instantid.png"))  # InstantID's keypoint drawing
    assert kps.shape == (64, 64, 3) and kps.max() > 0
    settings = json.loads((tmp_path / "out" / "settings.json").read_text())
    assert settings["mode"] == "instantid" and settings["identity_model"] == "insightface-fake"

    net = str(instantid_files / "InstantID" / "ControlNetModel")
    no_net = runner.invoke(app, [a for a in args if a not in ("--identitynet", net)])
    assert no_net.exit_code == 3 and "IdentityNet: not given" in no_net.output
    arcface = str(instantid_files / "antelopev2")
    no_arcface = runner.invoke(app, [a for a in args if a not in ("--insightface-dir", arcface)])
    assert no_arcface.exit_code == 3 and "512-d antelopev2" in " ".join(no_arcface.output.split())
