"""ID attention processors: exact plain output at scale 0, effect otherwise, install/remove, dtype/device."""

from __future__ import annotations

import pytest
import torch

from hifi_portrait.models import (
    IDAttnProcessor,
    get_id_attn_processors,
    id_attention_layer_names,
    install_id_attention,
    remove_id_attention,
    set_id_scale,
    with_id_tokens,
)
from hifi_portrait.utils.testing import get_dummy_unet

torch.set_num_threads(1)


def _run(unet, ehs, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 32, 32, generator=g)
    added = {"text_embeds": torch.randn(2, 32, generator=g), "time_ids": torch.rand(2, 6, generator=g) * 64}
    with torch.no_grad():
        return unet(x, 500, encoder_hidden_states=ehs, added_cond_kwargs=added).sample


def test_scale_zero_is_exactly_plain_and_scale_changes_output():
    unet = get_dummy_unet().eval()
    g = torch.Generator().manual_seed(1)
    text, tokens = torch.randn(2, 77, 64, generator=g), torch.randn(2, 4, 64, generator=g)
    plain = _run(unet, text)
    names = id_attention_layer_names(unet)
    # (2 down + 1 mid + 3 up attentions) x 2 transformer layers of the tiny UNet
    assert len(names) == 12 and all(n.endswith("attn2") for n in names)
    procs = install_id_attention(unet, num_tokens=4, scale=0.0)
    assert set(procs) == set(names) and isinstance(procs[names[0]], IDAttnProcessor)
    assert torch.equal(_run(unet, with_id_tokens(text, tokens)), plain)
    set_id_scale(unet, 0.7)
    assert all(p.scale == 0.7 for p in get_id_attn_processors(unet).values())
    ided = _run(unet, with_id_tokens(text, tokens))
    assert (ided - plain).abs().max() > 1e-4
    # zero ID tokens contribute exactly nothing (no bias in to_k_ip / to_v_ip): the uncond branch of CFG
    assert torch.equal(_run(unet, with_id_tokens(text, torch.zeros_like(tokens))), plain)
    assert remove_id_attention(unet) == len(names)
    assert torch.equal(_run(unet, text), plain)


def test_processor_state_is_per_layer_and_weights_follow_the_unet():
    unet = get_dummy_unet()
    install_id_attention(unet, num_tokens=4, init_from_text=False)
    names = list(get_id_attn_processors(unet))
    set_id_scale(unet, {n: float(i) for i, n in enumerate(names)})
    assert [p.scale for p in get_id_attn_processors(unet).values()] == [float(i) for i in range(len(names))]
    # processors are sub-modules of the UNet: dtype casts move them too
    unet.to(torch.bfloat16)
    assert all(p.to_k_ip.weight.dtype == torch.bfloat16 for p in get_id_attn_processors(unet).values())
    key = names[0] + ".processor.to_k_ip.weight"
    assert key in unet.state_dict()


def test_without_id_tokens_the_processor_is_plain_attention():
    """A UNet shared with a plain SDXL pipeline (from_pipe) is unchanged for it: text alone = no identity, even
    at a non-zero scale (the old route took the last T text tokens as ID tokens)."""
    unet = get_dummy_unet().eval()
    text = torch.randn(2, 77, 64, generator=torch.Generator().manual_seed(1))
    plain = _run(unet, text)
    install_id_attention(unet, num_tokens=4, scale=1.0, init_from_text=False)
    assert torch.equal(_run(unet, text), plain)
    with pytest.raises(ValueError, match="with_id_tokens"):
        _run(unet, (text, [torch.randn(2, 4, 64), torch.randn(2, 4, 64)]))  # two sets, no IP-Adapter loaded
    with pytest.raises(ValueError, match="no ID attention"):
        set_id_scale(get_dummy_unet(), 1.0)


def test_id_key_value_cache_is_exact_and_invalidated_by_new_tokens_or_weights():
    proc = IDAttnProcessor(hidden_size=32, cross_attention_dim=16, num_tokens=4)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 4, 16, generator=g)
    with torch.no_grad():
        k1, v1 = proc.id_key_value(tokens)
        k2, v2 = proc.id_key_value(tokens.clone())  # same values, another tensor: served from the cache
        assert k2 is k1 and v2 is v1
        assert torch.equal(k1, proc.to_k_ip(tokens)) and torch.equal(v1, proc.to_v_ip(tokens))
        other = tokens + 1.0
        assert torch.equal(proc.id_key_value(other)[0], proc.to_k_ip(other))  # new tokens: recomputed
        proc.to_k_ip.weight.mul_(2.0)  # an in-place weight update (optimizer step, load_state_dict)
        assert torch.equal(proc.id_key_value(other)[0], proc.to_k_ip(other))
    # with autograd on (training) nothing is cached and gradients flow to the projections
    key, _ = proc.id_key_value(other)
    key.sum().backward()
    assert proc.to_k_ip.weight.grad is not None and proc._kv_cache is None


def _masked_ip_setup(seed: int = 0):
    """One cross-attention layer, diffusers' IP-Adapter processor for two adapters (one image, then two images
    with a scale each) with random weights, and our processor serving it; inputs with masks at image size."""
    from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0

    g = torch.Generator().manual_seed(seed)
    attn = Attention(query_dim=32, cross_attention_dim=16, heads=2, dim_head=16).eval()
    ip = IPAdapterAttnProcessor2_0(hidden_size=32, cross_attention_dim=16, num_tokens=(4, 4), scale=[0.6, [0.5, 0.9]])
    ours = IDAttnProcessor(hidden_size=32, cross_attention_dim=16, num_tokens=4, scale=0.7)
    with torch.no_grad():
        for p in list(ip.parameters()) + list(ours.parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    ours.ip_adapter = ip
    hidden = torch.randn(2, 64, 32, generator=g)  # an 8 x 8 latent
    text = torch.randn(2, 7, 16, generator=g)
    images = [torch.randn(2, 1, 4, 16, generator=g), torch.randn(2, 2, 4, 16, generator=g)]
    masks = torch.zeros(1, 3, 32, 32)
    masks[0, 0, :, :16] = 1.0  # left half
    masks[0, 1, :16] = 1.0  # top half
    masks[0, 2, 8:24, 8:24] = 1.0  # centre
    return attn, ip, ours, hidden, text, images, [masks[:, :1], masks[:, 1:]]


def test_masked_ip_adapters_compute_what_diffusers_computes():
    """With ``ip_adapter_masks`` (one mask per image, a scale per image), our processor adds exactly diffusers'
    ``IPAdapterAttnProcessor2_0`` terms: alone (no ID tokens) and beside the ID attention."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    attn, ip, ours, hidden, text, images, masks = _masked_ip_setup()
    with torch.no_grad():
        reference = ip(attn, hidden, encoder_hidden_states=(text, images), ip_adapter_masks=masks)
        plain = AttnProcessor2_0()(attn, hidden, encoder_hidden_states=text)
        full = [torch.ones_like(m) for m in masks]
        unmasked = ip(attn, hidden, encoder_hidden_states=(text, images), ip_adapter_masks=full)
        assert (reference - unmasked).abs().max() > 1e-3  # the masks matter
        torch.testing.assert_close(
            ours(attn, hidden, encoder_hidden_states=(text, images), ip_adapter_masks=masks), reference
        )
        # beside the ID tokens: the IP-Adapter terms add to ours as they add to plain attention
        tokens = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(5))
        ours.ip_adapter = None
        id_only = ours(attn, hidden, encoder_hidden_states=(text, [tokens]))
        ours.ip_adapter = ip
        both = ours(attn, hidden, encoder_hidden_states=(text, [tokens, *images]), ip_adapter_masks=masks)
        assert (id_only - plain).abs().max() > 1e-3
        torch.testing.assert_close(both - id_only, reference - plain)
        # an adapter whose scales are all 0 is skipped, as in diffusers
        ip.scale = [0.6, [0.0, 0.0]]
        torch.testing.assert_close(
            ours(attn, hidden, encoder_hidden_states=(text, images), ip_adapter_masks=masks),
            ip(attn, hidden, encoder_hidden_states=(text, images), ip_adapter_masks=masks),
        )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda images, masks: (images, masks[:1]), "Length of ip_adapter_masks"),
        (lambda images, masks: (images, [masks[0], masks[1][:, :1]]), "does not match number of ip images"),
        (lambda images, masks: (images, [masks[0], masks[1][0]]), "should be a tensor with shape"),
    ],
    ids=["one-mask-list-for-two-adapters", "fewer-masks-than-images", "3d-mask"],
)
def test_bad_ip_adapter_masks_fail_as_in_diffusers(change, message):
    """Masks that do not fit the images are refused with diffusers' own message, not used in part: one mask for
    two images would otherwise leave the second image out without a word."""
    attn, ip, ours, hidden, text, images, masks = _masked_ip_setup()
    images, masks = change(images, masks)
    for proc in (ip, ours):
        with pytest.raises(ValueError, match=message), torch.no_grad():
            proc(attn, hidden, encoder_hidden_states=(text, images), ip_adapter_masks=masks)


def test_ip_adapter_masks_and_per_image_scales_must_agree():
    attn, ip, ours, hidden, text, images, masks = _masked_ip_setup()
    ip.scale = [0.6, [0.5, 0.9, 0.3]]  # three scales for two masks
    for proc in (ip, ours):
        with pytest.raises(ValueError, match="does not match number of scales"), torch.no_grad():
            proc(attn, hidden, encoder_hidden_states=(text, images), ip_adapter_masks=masks)


def test_a_processor_built_without_arguments_is_a_weightless_placeholder():
    """``IDAttnProcessor()`` (diffusers' reset idiom ``type(processor)()``) is plain attention without weights,
    which ignores ID tokens; copies of real processors stay real."""
    import copy

    from diffusers.models.attention_processor import AttnProcessor2_0

    attn, _, ours, hidden, text, _, _ = _masked_ip_setup()
    placeholder = IDAttnProcessor()
    assert placeholder.is_placeholder and not list(placeholder.parameters())
    tokens = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        plain = AttnProcessor2_0()(attn, hidden, encoder_hidden_states=text)
        assert torch.equal(placeholder(attn, hidden, encoder_hidden_states=(text, [tokens])), plain)
    ours.ip_adapter = None
    twin = copy.deepcopy(ours)
    assert not twin.is_placeholder and torch.equal(twin.to_k_ip.weight, ours.to_k_ip.weight)
