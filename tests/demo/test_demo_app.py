"""The page's construction, the weights check and the ``demo`` subcommand (no server, no browser)."""

from __future__ import annotations

import numpy as np
import pytest
from demo_photos import OBAMAS
from typer.testing import CliRunner

from hifi_portrait.demo import WeightsConfig, build_demo, weights_help_markdown
from hifi_portrait.demo.callbacks import BLENDSHAPE_SLIDERS
from hifi_portrait.errors import ModelFilesMissingError
from hifi_portrait.pipelines.model_files import SDXL_PARTS


def _fake_sdxl_layout(root):
    root.mkdir()
    (root / "model_index.json").write_text("{}")
    for sub in SDXL_PARTS:
        (root / sub).mkdir()
    return root


def test_weights_check_names_every_missing_file(tmp_path):
    problems = WeightsConfig().problems()
    assert len(problems) == 3
    text = "\n".join(problems)
    for needle in ("SDXL base", "--base", "adapter", "--adapter", "CLIP vision encoder", "--image-encoder"):
        assert needle in text
    with pytest.raises(ModelFilesMissingError, match="--adapter"):
        WeightsConfig().require()
    md = weights_help_markdown(problems)
    assert "Generation is off" in md and "hifi-portrait demo --base" in md
    assert weights_help_markdown([]) == ""

    base = _fake_sdxl_layout(tmp_path / "sdxl")
    adapter = tmp_path / "adapter.safetensors"
    adapter.write_bytes(b"x")
    encoder = base / "image_encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text("{}")
    (encoder / "model.safetensors").write_bytes(b"x")
    cfg = WeightsConfig(base=base, adapter=adapter)
    assert cfg.complete and cfg.resolved_image_encoder() == encoder
    cfg.require()

    # a pickle checkpoint is refused by name; a folder without unet/ is reported
    (base / "unet").rmdir()
    bad = WeightsConfig(base=base, adapter=tmp_path / "adapter.ckpt", image_encoder=encoder).problems()
    assert any("lacks unet" in p for p in bad) and any(".safetensors" in p for p in bad)


def _component(demo, elem_id):
    for comp in demo.config["components"]:
        if comp.get("props", {}).get("elem_id") == elem_id:
            return comp["props"]
    raise AssertionError(f"no component {elem_id}")


def _api_fn(demo, api_name):
    for fn in demo.fns.values():
        if fn.api_name == api_name:
            return fn.fn
    raise AssertionError(f"no endpoint {api_name}")


def test_page_without_weights_says_which_files(analyzer, landmark_backend):
    demo = build_demo(analyzer, landmark_backend, max_queue=5, max_upload_mb=2)
    status = _component(demo, "weights-status")
    assert status["visible"] is True and "SDXL base" in status["value"] and "--adapter" in status["value"]
    assert _component(demo, "generate")["interactive"] is False
    assert demo._queue.max_size == 5 and demo.hifi_limits.max_upload_mb == 2
    apis = {fn.api_name for fn in demo.fns.values() if fn.api_name}
    assert {"analyze", "preview", "generate"} <= apis
    with pytest.raises(Exception, match="weights are not configured"):
        _api_fn(demo, "generate")(
            None,
            "hifi",
            "sliders",
            None,
            "p",
            "",
            0,
            2,
            1.0,
            1.0,
            0,
            0,
            0,
            "neutral",
            1.0,
            *[0.0] * len(BLENDSHAPE_SLIDERS),
        )


def test_page_generates_with_a_configured_generator(analyzer, landmark_backend, mixed_view):
    calls = []

    def generator(references, landmark_map, **kwargs):
        calls.append((references, landmark_map, kwargs))
        return np.full((64, 64, 3), 7, dtype=np.uint8)

    demo = build_demo(analyzer, landmark_backend, pipeline=generator)
    assert _component(demo, "weights-status")["visible"] is False
    assert _component(demo, "generate")["interactive"] is True
    out = _api_fn(demo, "generate")(
        mixed_view.state,
        "hifi",
        "sliders",
        None,
        "a portrait",
        "blurry",
        3,
        2,
        0.9,
        0.7,
        15,
        0,
        0,
        "smile",
        0.5,
        *[0.0] * len(BLENDSHAPE_SLIDERS),
    )
    assert out.shape == (64, 64, 3)
    references, landmark_map, kwargs = calls[0]
    assert [r.source for r in references] == [p.name for p in OBAMAS]  # the other person is left out
    assert landmark_map.shape == (1024, 1024, 3) and landmark_map.max() > 0
    assert kwargs == dict(
        prompt="a portrait", negative_prompt="blurry", seed=3, steps=2, id_scale=0.9, control_scale=0.7
    )


def test_demo_subcommand_help_and_bad_port():
    from hifi_portrait.cli.main import app

    runner = CliRunner()
    result = runner.invoke(app, ["demo", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in ("--host", "--port", "--base", "--adapter", "--image-encoder", "--max-upload-mb", "--max-queue"):
        assert option in result.output
    assert "127.0.0.1" in result.output
    assert runner.invoke(app, ["demo", "--port", "0"]).exit_code == 2
