"""Group portraits through the pipeline (tiny random models): regional ID tokens with CFG and HiFi-Net, end to end,
and the Python API (generate_group) on real landmarks of the bundled photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hifi_portrait.errors import ConfigError
from hifi_portrait.models import get_id_attn_processors
from hifi_portrait.pipelines import StableDiffusionXLHiFiPortraitPipeline
from hifi_portrait.pipelines.group import Person, generate_group
from hifi_portrait.utils.testing import get_dummy_adapter, get_dummy_components, get_dummy_face, randomize_

DATA = Path(__file__).resolve().parents[1] / "data"


def make_pipe() -> StableDiffusionXLHiFiPortraitPipeline:
    pipe = StableDiffusionXLHiFiPortraitPipeline(**get_dummy_components(), add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.set_hifi_portrait(**get_dummy_adapter(pipe.unet, trained=True))
    for proc in get_id_attn_processors(pipe.unet).values():
        randomize_(proc, seed=7, std=0.2)
    randomize_(pipe.hifi_net, seed=8, std=0.05)  # every HiFi-Net weight non-zero (ID alignment included)
    return pipe


def run(pipe, seed=0, **kwargs):
    kwargs.setdefault("prompt", "two people")
    kwargs.setdefault("num_inference_steps", 2)
    return pipe(generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs).images


@pytest.fixture(scope="module")
def pipe():
    return make_pipe()


@pytest.fixture(scope="module")
def tokens(pipe):
    a = pipe.encode_id_tokens(faces=[get_dummy_face(0), get_dummy_face(1)])
    b = pipe.encode_id_tokens(faces=[get_dummy_face(5)])
    return a, b


def test_empty_region_of_b_is_the_one_person_generation_end_to_end(pipe, tokens, landmark_map):
    """Whole pipeline (CFG, HiFi-Net with its ID alignment, UNet ID attention): person A over the whole canvas and
    B with an empty region gives exactly the image of A alone; B's tokens then change nothing."""
    a, b = tokens
    one = run(pipe, id_tokens=a, landmark_image=landmark_map)
    full, empty = np.ones((64, 64), np.float32), np.zeros((64, 64), np.float32)
    two = run(pipe, id_tokens=[a, b], id_regions=np.stack([full, empty]), landmark_image=landmark_map)
    np.testing.assert_array_equal(two, one)
    other_b = run(pipe, id_tokens=[a, b * 3], id_regions=np.stack([full, empty]), landmark_image=landmark_map)
    np.testing.assert_array_equal(other_b, one)
    # with real regions both people act: B's tokens change the image
    left, right = np.zeros((64, 64), np.float32), np.zeros((64, 64), np.float32)
    left[:, :30], right[:, 34:] = 1, 1
    split = run(pipe, id_tokens=[a, b], id_regions=np.stack([left, right]), landmark_image=landmark_map)
    split_b = run(pipe, id_tokens=[a, b * 3], id_regions=np.stack([left, right]), landmark_image=landmark_map)
    assert np.abs(split - split_b).max() > 1e-4 and np.abs(split - one).max() > 1e-4


def test_group_inputs_are_checked(pipe, tokens, landmark_map):
    a, b = tokens
    with pytest.raises(ConfigError, match="one per person"):
        run(pipe, id_tokens=[a, b], id_regions=np.ones((3, 64, 64)), landmark_image=landmark_map)
    with pytest.raises(ConfigError, match="non-negative"):
        run(pipe, id_tokens=[a, b], id_regions=-np.ones((2, 64, 64)), landmark_image=landmark_map)
    with pytest.raises(ConfigError, match="image or the latent"):
        run(pipe, id_tokens=[a, b], id_regions=np.ones((2, 48, 48)), landmark_image=landmark_map)
    with pytest.raises(ConfigError, match="encode_id_tokens"):
        run(pipe, faces=[get_dummy_face(0)], id_tokens=[a, b], id_regions=np.ones((2, 64, 64)))


def test_generate_group_api_on_real_photos(pipe):
    """Two people from the bundled photos (real landmarks -> shapes -> one map and regions), tiny models."""
    from hifi_portrait.face import FaceAnalyzer
    from hifi_portrait.landmarks import make_target

    analyzer = FaceAnalyzer()
    obama = [analyzer.analyze(DATA / n) for n in ("obama.jpg", "obama2.jpg")]
    biden = [analyzer.analyze(DATA / "biden.jpg")]
    people = [
        Person(faces=obama, target=make_target(yaw=20)),
        Person(faces=biden, target=make_target(yaw=-25), relative_size=0.8),
    ]
    g = torch.Generator().manual_seed(0)
    result = generate_group(pipe, people, prompt="two people", size=(128, 64), num_inference_steps=2,
                            generator=g, output_type="np")  # fmt: skip
    assert result.images.shape == (1, 64, 128, 3)
    assert result.regions.shape == (2, 64, 128) and result.regions.sum(0).max() == 1
    assert all(r.sum() > 0 for r in result.regions)
    assert result.landmark_map.shape == (64, 128, 3)
    for region in result.regions:  # each person's face is drawn inside its region
        assert (result.landmark_map.max(2)[region > 0] > 0).any()
    assert len(result.id_tokens) == 2
    with pytest.raises(ConfigError, match="no references"):
        generate_group(pipe, [Person(), Person()], prompt="x", size=(128, 64))
    with pytest.raises(ConfigError, match="by generate_group"):
        generate_group(pipe, people, prompt="x", size=(128, 64), id_tokens=[1])


@pytest.fixture(scope="module")
def instantid_pipe(tmp_path_factory):
    """A tiny InstantID pipeline (random checkpoint in InstantID's layout, converted; a random IdentityNet)."""
    from hifi_portrait.loaders.instantid import convert_instantid_checkpoint, instantid_ip_layers, load_instantid
    from hifi_portrait.models.instantid_projection import InstantIDImageProjection
    from hifi_portrait.utils.testing import get_dummy_controlnet, get_dummy_unet

    root = tmp_path_factory.mktemp("instantid_group")
    torch.manual_seed(0)
    proj = InstantIDImageProjection(num_tokens=4, output_dim=64, hidden_dim=32, num_layers=2, num_heads=2, ff_mult=2)
    randomize_(proj, seed=1, std=0.1)
    unet = get_dummy_unet()
    modules = dict(unet.named_modules())
    ip = {}
    for i, layer in instantid_ip_layers(unet).items():
        shape = (modules[layer].to_k.out_features, modules[layer].to_k.in_features)
        ip[f"{i}.to_k_ip.weight"], ip[f"{i}.to_v_ip.weight"] = torch.randn(shape) * 0.2, torch.randn(shape) * 0.2
    torch.save({"image_proj": proj.state_dict(), "ip_adapter": ip}, root / "ip-adapter.bin")
    converted = convert_instantid_checkpoint(root / "ip-adapter.bin", root / "ip-adapter.safetensors")
    pipe = StableDiffusionXLHiFiPortraitPipeline(
        **get_dummy_components(with_image_encoder=False), add_watermarker=False
    )
    pipe.set_progress_bar_config(disable=True)
    load_instantid(pipe, converted, controlnet=get_dummy_controlnet(get_dummy_unet(), seed=3), id_scale=0.8)
    return pipe


def test_instantid_mode_routes_identitynet_per_person(instantid_pipe):
    """InstantID mode: IdentityNet runs once per person (its keypoints, its tokens) and its residuals are masked
    by the person's region, like the UNet's ID attention. A full-canvas A with an empty B equals InstantID on A
    alone, bit for bit (B's tokens and keypoints then change nothing); with real regions B's inputs do act."""
    from hifi_portrait.landmarks import IdentityShape, make_target
    from hifi_portrait.landmarks.group import layout_group, render_group

    pipe = instantid_pipe
    g = torch.Generator().manual_seed(0)
    a = pipe.encode_id_tokens(id_embeds=torch.randn(2, 512, generator=g) * 4)
    b = pipe.encode_id_tokens(id_embeds=torch.randn(1, 512, generator=g) * 4)
    shape = IdentityShape.canonical()
    group = layout_group([shape, shape], [make_target(yaw=20), make_target(yaw=-20)], size=(128, 64))
    maps = [render_group([p], "instantid") for p in group.people]
    every = group.render("instantid")
    one = run(pipe, id_tokens=a, image=maps[0])
    full = np.stack([np.ones((64, 128), np.float32), np.zeros((64, 128), np.float32)])
    two = run(pipe, id_tokens=[a, b], id_regions=full, image=every, id_region_images=maps)
    np.testing.assert_array_equal(two, one)
    swapped = run(pipe, id_tokens=[a, b * 2], id_regions=full, image=every, id_region_images=[maps[0], maps[0]])
    np.testing.assert_array_equal(swapped, one)
    real = run(pipe, id_tokens=[a, b], id_regions=group.regions, image=every, id_region_images=maps)
    real_b = run(pipe, id_tokens=[a, b * 2], id_regions=group.regions, image=every, id_region_images=maps)
    assert np.abs(real - real_b).max() > 1e-4 and np.abs(real - one).max() > 1e-4
    with pytest.raises(ConfigError, match="one per person"):
        run(pipe, id_tokens=[a, b], id_regions=group.regions, image=every, id_region_images=maps[:1])
    with pytest.raises(ConfigError, match="group portraits"):
        run(pipe, id_tokens=a, image=every, id_region_images=maps)
