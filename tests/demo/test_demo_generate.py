"""Generation from the page with weights given as files: a tiny seeded random SDXL saved in the diffusers layout, an
adapter file saved by the loader, loaded by the demo exactly as user files would be (2 steps, 64x64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hifi_portrait.demo import WeightsConfig, build_demo
from hifi_portrait.demo.callbacks import BLENDSHAPE_SLIDERS

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    from hifi_portrait.pipelines import StableDiffusionXLHiFiPortraitPipeline
    from hifi_portrait.utils.testing import get_dummy_adapter, get_dummy_components

    root = tmp_path_factory.mktemp("weights")
    base = StableDiffusionXLHiFiPortraitPipeline(**get_dummy_components(), add_watermarker=False)
    base.save_pretrained(root / "sdxl", safe_serialization=True)
    base.set_hifi_portrait(**get_dummy_adapter(base.unet, trained=True))
    base.save_hifi_portrait(root / "adapter.safetensors")
    return WeightsConfig(base=root / "sdxl", adapter=root / "adapter.safetensors")


def _api_fn(demo, api_name):
    return next(fn.fn for fn in demo.fns.values() if fn.api_name == api_name)


def _props(demo, elem_id):
    return next(c["props"] for c in demo.config["components"] if c.get("props", {}).get("elem_id") == elem_id)


def test_generate_with_weights_from_files(weight_files, mixed_view, analyzer, landmark_backend):
    assert weight_files.complete, weight_files.problems()
    demo = build_demo(analyzer, landmark_backend, weights=weight_files, generation_size=(64, 64))
    assert _props(demo, "weights-status")["visible"] is False
    assert _props(demo, "generate")["interactive"] is True
    generate = _api_fn(demo, "generate")
    sliders = [0.0] * len(BLENDSHAPE_SLIDERS)

    def run(yaw=0.0, seed=1):
        return generate(
            mixed_view.state,
            "hifi",
            "sliders",
            None,
            "a portrait photo",
            "blurry",
            seed,
            2,
            1.0,
            1.0,
            yaw,
            0,
            0,
            "neutral",
            1.0,
            *sliders,
        )

    first = run()
    assert first.shape == (64, 64, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, run())  # same seed, same portrait
    assert not np.array_equal(first, run(seed=2))
    assert not np.array_equal(first, run(yaw=40.0))  # the landmark map conditions the output


def test_generate_without_references_says_what_to_do(weight_files, analyzer, landmark_backend):
    demo = build_demo(analyzer, landmark_backend, weights=weight_files, generation_size=(64, 64))
    with pytest.raises(Exception, match="upload photos"):
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
