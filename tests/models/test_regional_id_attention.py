"""Regional ID attention (group portraits): each person's ID tokens act only inside its region, at every
resolution the UNet attends at; nothing acts outside every region; one person is today's path, bit for bit."""

from __future__ import annotations

import pytest
import torch

from hifi_portrait.errors import ConfigError
from hifi_portrait.models import (
    HiFiNetModel,
    RegionalIDTokens,
    get_id_attn_processors,
    install_id_attention,
    region_masks_at,
    with_id_tokens,
)
from hifi_portrait.models.id_attention import region_sizes
from hifi_portrait.utils.testing import get_dummy_unet, randomize_

torch.set_num_threads(1)

LAT = (26, 38)  # non-square, and 13 x 19 one level down: odd sizes on both axes


def _two_level_unet():
    """A tiny SDXL-style UNet with cross-attention at two resolutions (latent and latent / 2) and in the mid block."""
    return get_dummy_unet(
        seed=0,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        transformer_layers_per_block=1,
    ).eval()


def _masks(lat=LAT):
    """Person A: left block; person B: right block; a gap between them and a border no one owns."""
    m = torch.zeros(2, *lat)
    m[0, 3:20, 2:15] = 1.0
    m[1, 5:24, 21:35] = 1.0
    return m


def _inputs(seed=0, lat=LAT):
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(2, 4, *lat, generator=g),
        "text": torch.randn(2, 77, 64, generator=g),
        "a": torch.randn(2, 4, 64, generator=g),
        "b": torch.randn(2, 4, 64, generator=g),
        "b2": torch.randn(2, 4, 64, generator=g) * 3,
        "added": {"text_embeds": torch.randn(2, 32, generator=g), "time_ids": torch.rand(2, 6, generator=g) * 64},
    }


def _run(unet, ehs, x):
    with torch.no_grad():
        return unet(x["x"], 500, encoder_hidden_states=ehs, added_cond_kwargs=x["added"]).sample


def _capture_attn2_inputs(unet, ehs, x):
    """{layer: hidden_states entering the layer's attn2} during one UNet forward."""
    got, hooks = {}, []
    modules = dict(unet.named_modules())
    for name in get_id_attn_processors(unet):

        def hook(mod, args, kwargs, name=name):
            got[name] = (args[0] if args else kwargs["hidden_states"]).clone()

        hooks.append(modules[name].register_forward_pre_hook(hook, with_kwargs=True))
    _run(unet, ehs, x)
    for h in hooks:
        h.remove()
    return got


def test_region_sizes_follow_the_unets_downsampling_chain():
    assert region_sizes(26, 38, 26 * 38) == (26, 38)
    assert region_sizes(26, 38, 13 * 19) == (13, 19)
    assert region_sizes(26, 38, 7 * 10) == (7, 10)  # ceil(13/2) x ceil(19/2)
    assert region_sizes(128, 96, 32 * 24) == (32, 24)
    with pytest.raises(ConfigError, match="latent resolution"):
        region_sizes(26, 38, 100)
    m = _masks()
    small = region_masks_at(m[None], (7, 10))
    assert small.shape == (1, 2, 7, 10)
    # disjoint at latent resolution -> sum <= 1 at every resolution; a cell without any region cell is exactly 0
    assert float(small.sum(1).max()) <= 1.0
    assert float(small[0, 0, :, -1].abs().max()) == 0.0  # the right border column belongs to no one
    # a 2x2 window straddling the odd edge averages its valid cells only (ceil_mode): full region stays 1
    full = region_masks_at(torch.ones(1, 1, 13, 19), (7, 10))
    assert torch.equal(full, torch.ones(1, 1, 7, 10))


def test_person_b_changes_nothing_outside_its_region_at_every_layer():
    """Acceptance: with two people, changing B's tokens changes no value of any ID-attention layer's output outside
    B's region (exactly 0), and outside every region the output is the text attention alone."""
    unet = _two_level_unet()
    install_id_attention(unet, num_tokens=4, scale=1.0, init_from_text=False)
    randomize_(unet, seed=3, std=0.2)  # every weight random: nothing is zero by construction
    x = _inputs()
    m = _masks()
    ehs_1 = with_id_tokens(x["text"], [x["a"], x["b"]], regions=m)
    ehs_2 = with_id_tokens(x["text"], [x["a"], x["b2"]], regions=m)
    states = _capture_attn2_inputs(unet, ehs_1, x)
    modules = dict(unet.named_modules())
    sizes = set()
    for name, proc in get_id_attn_processors(unet).items():
        attn, hs = modules[name], states[name]
        size = region_sizes(*LAT, hs.shape[1])
        sizes.add(size)
        with torch.no_grad():
            out_1 = proc(attn, hs, encoder_hidden_states=ehs_1)
            out_2 = proc(attn, hs, encoder_hidden_states=ehs_2)
            plain = proc(attn, hs, encoder_hidden_states=x["text"])
        small = region_masks_at(m[None], size).flatten(2)[0]  # (2, N)
        outside_b = small[1] == 0
        outside_all = (small[0] == 0) & outside_b
        assert outside_b.any() and (~outside_b).any() and outside_all.any()
        diff = (out_1 - out_2).abs()
        assert float(diff[:, outside_b].max()) == 0.0, name
        assert float(diff[:, ~outside_b].max()) > 1e-4, name  # B's tokens do act inside its region
        assert torch.equal(out_1[:, outside_all], plain[:, outside_all]), name
    assert sizes == {(26, 38), (13, 19)}  # both resolutions the UNet attends at were checked


def test_empty_region_of_b_gives_the_one_person_generation_of_a_exactly():
    """With B's region empty the output is bit-identical to the one-person output of A: B's attention is skipped
    where its resized mask is empty, A's term is the one-person computation times its mask, and a full mask
    multiplies by exactly 1.0 (so a full-canvas A equals today's unmasked one-person path)."""
    unet = _two_level_unet()
    install_id_attention(unet, num_tokens=4, scale=0.8, init_from_text=False)
    randomize_(unet, seed=4, std=0.2)
    x = _inputs(1)
    m = _masks()
    today = _run(unet, with_id_tokens(x["text"], x["a"]), x)
    full_a = torch.stack([torch.ones(LAT), torch.zeros(LAT)])
    assert torch.equal(_run(unet, with_id_tokens(x["text"], [x["a"], x["b"]], regions=full_a), x), today)
    only_a = torch.stack([m[0], torch.zeros(LAT)])
    one_person = _run(unet, with_id_tokens(x["text"], [x["a"]], regions=m[:1]), x)
    assert torch.equal(_run(unet, with_id_tokens(x["text"], [x["a"], x["b"]], regions=only_a), x), one_person)
    # and the regional result is not the unmasked one (the mask does act), nor the plain UNet
    assert (one_person - today).abs().max() > 1e-4
    assert (one_person - _run(unet, x["text"], x)).abs().max() > 1e-4


def test_regional_tokens_check_their_inputs():
    text = torch.randn(2, 77, 64)
    with pytest.raises(ConfigError, match="regions"):
        with_id_tokens(text, [torch.randn(1, 4, 64), torch.randn(1, 4, 64)])
    with pytest.raises(ConfigError, match="one per person"):
        RegionalIDTokens([torch.randn(1, 4, 64)] * 2, torch.ones(3, 8, 8))
    unet = get_dummy_unet().eval()
    install_id_attention(unet, num_tokens=4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 32, 32, generator=g)
    added = {"text_embeds": torch.randn(2, 32, generator=g), "time_ids": torch.rand(2, 6, generator=g) * 64}
    with pytest.raises(ConfigError, match="latent resolution"), torch.no_grad():
        ehs = with_id_tokens(text, [torch.randn(1, 4, 64)] * 2, regions=torch.ones(2, 20, 20))
        unet(x, 500, encoder_hidden_states=ehs, added_cond_kwargs=added)


def test_hifi_net_id_alignment_is_masked_likewise():
    """HiFi-Net's cached ID alignment: every level's aligned landmark features outside B's region do not depend on
    B's tokens (exactly); with B's region empty and A's full, condition and residuals equal the one-person ones."""
    unet = get_dummy_unet().eval()
    hifi = HiFiNetModel.from_unet(unet, size_ratio=0.5, vae_scale_factor=2, attention_head_dim=8).eval()
    randomize_(hifi, seed=5, std=0.1)
    g = torch.Generator().manual_seed(0)
    cond = torch.rand(1, 3, 64, 64, generator=g)
    a, b, b2 = (torch.randn(1, 4, 64, generator=g) for _ in range(3))
    m = torch.zeros(2, 32, 32)
    m[0, 4:28, 2:14] = 1
    m[1, 6:30, 18:30] = 1
    with torch.no_grad():
        c1 = hifi.prepare_condition(cond, RegionalIDTokens([a, b], m))
        c2 = hifi.prepare_condition(cond, RegionalIDTokens([a, b2], m))
        for f1, f2 in zip(c1.features, c2.features, strict=True):
            small = region_masks_at(m[None], tuple(f1.shape[-2:]))[0, 1]
            diff = (f1 - f2).abs().amax(1)[0]
            assert float(diff[small == 0].max()) == 0.0
            assert float(diff[small > 0].max()) > 1e-5
        full_a = torch.stack([torch.ones(32, 32), torch.zeros(32, 32)])
        one = hifi.prepare_condition(cond, a)
        two = hifi.prepare_condition(cond, RegionalIDTokens([a, b], full_a))
        assert all(torch.equal(p, q) for p, q in zip(one.features, two.features, strict=True))
        sample = torch.randn(1, 4, 32, 32, generator=g)
        added = {"text_embeds": torch.randn(1, 32, generator=g), "time_ids": torch.rand(1, 6, generator=g) * 64}
        d1, m1 = hifi(sample, 10, condition=one, added_cond_kwargs=added, return_dict=False)
        d2, m2 = hifi(sample, 10, condition=two, added_cond_kwargs=added, return_dict=False)
        assert torch.equal(m1, m2) and all(torch.equal(p, q) for p, q in zip(d1, d2, strict=True))
