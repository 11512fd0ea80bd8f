"""HiFiNetModel: residual shapes match the UNet, zero-init leaves SDXL unchanged, cache equals recompute."""

from __future__ import annotations

import pytest
import torch

from hifi_portrait.models import HiFiNetModel
from hifi_portrait.utils.testing import get_dummy_unet, randomize_

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def unet():
    return get_dummy_unet().eval()


def _inputs(b: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {
        "sample": torch.randn(b, 4, 32, 32, generator=g),
        "cond": torch.rand(b, 3, 64, 64, generator=g),
        "tokens": torch.randn(b, 4, 64, generator=g),
        "text": torch.randn(b, 77, 64, generator=g),
        "added": {"text_embeds": torch.randn(b, 32, generator=g), "time_ids": torch.rand(b, 6, generator=g) * 64},
    }


def _unet_down_shapes(unet, x):
    """Shapes of the UNet's skip connections, from its own forward (hook on down blocks)."""
    shapes = []
    hooks = [unet.conv_in.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))]
    for block in unet.down_blocks:
        hooks.append(block.register_forward_hook(lambda m, i, o: shapes.extend(tuple(t.shape) for t in o[1])))
    with torch.no_grad():
        unet(x["sample"], 10, encoder_hidden_states=x["text"], added_cond_kwargs=x["added"])
    for h in hooks:
        h.remove()
    return shapes


@torch.no_grad()
@pytest.mark.parametrize("ratio,depth", [(0.5, 1), (0.25, 2), (1.0, 2)])
def test_residual_shapes_match_unet(unet, ratio, depth):
    x = _inputs()
    net = HiFiNetModel.from_unet(unet, size_ratio=ratio, branch_layers_per_block=depth, vae_scale_factor=2)
    down, mid = net(
        x["sample"],
        10,
        controlnet_cond=x["cond"],
        id_tokens=x["tokens"],
        added_cond_kwargs=x["added"],
        return_dict=False,
    )
    assert [tuple(d.shape) for d in down] == _unet_down_shapes(unet, x)
    assert mid.shape == (2, 64, 16, 16)
    # untrained: zero-initialised output projections give exact zeros, so the UNet output is unchanged
    assert all(torch.count_nonzero(d) == 0 for d in down) and torch.count_nonzero(mid) == 0
    plain = unet(x["sample"], 10, encoder_hidden_states=x["text"], added_cond_kwargs=x["added"]).sample
    with_branch = unet(
        x["sample"],
        10,
        encoder_hidden_states=x["text"],
        added_cond_kwargs=x["added"],
        down_block_additional_residuals=down,
        mid_block_additional_residual=mid,
    ).sample
    assert torch.equal(plain, with_branch)


@torch.no_grad()
def test_full_size_variant_copies_unet_encoder(unet):
    net = HiFiNetModel.from_unet(unet, size_ratio=1.0, branch_layers_per_block=2, vae_scale_factor=2)
    assert torch.equal(net.conv_in.weight, unet.conv_in.weight)
    assert torch.equal(net.resnets[1][0].conv1.weight, unet.down_blocks[1].resnets[0].conv1.weight)
    assert torch.equal(net.time_embedding.linear_1.weight, unet.time_embedding.linear_1.weight)
    light = HiFiNetModel.from_unet(unet, size_ratio=0.25, vae_scale_factor=2)
    assert sum(p.numel() for p in light.parameters()) < sum(p.numel() for p in net.parameters()) / 2


@torch.no_grad()
def test_cached_condition_equals_recompute_and_depends_on_inputs(unet):
    x = _inputs()
    net = randomize_(HiFiNetModel.from_unet(unet, size_ratio=0.5, vae_scale_factor=2), seed=3, std=0.1).eval()
    kwargs = {"added_cond_kwargs": x["added"], "return_dict": False}
    cond = net.prepare_condition(x["cond"], x["tokens"])
    d1, m1 = net(x["sample"], 10, condition=cond, **kwargs)
    d2, m2 = net(x["sample"], 10, controlnet_cond=x["cond"], id_tokens=x["tokens"], **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(d1, d2, strict=True)) and torch.equal(m1, m2)
    # landmark map, ID tokens and latent all change the residuals
    y = _inputs(seed=1)
    for cond_in, tokens in ((y["cond"], x["tokens"]), (x["cond"], y["tokens"])):
        d3, _ = net(x["sample"], 10, controlnet_cond=cond_in, id_tokens=tokens, **kwargs)
        assert (d3[-1] - d1[-1]).abs().max() > 1e-5
    d4, _ = net(y["sample"], 10, condition=cond, **kwargs)
    assert (d4[0] - d1[0]).abs().max() > 1e-5
    # conditioning_scale multiplies every residual; a batch-1 condition broadcasts
    d5, m5 = net(x["sample"], 10, condition=cond, conditioning_scale=0.5, **kwargs)
    torch.testing.assert_close(m5, m1 * 0.5)
    c1 = net.prepare_condition(x["cond"][:1], x["tokens"][:1])
    d6, _ = net(x["sample"][:1].expand(2, -1, -1, -1), 10, condition=c1, **kwargs)
    torch.testing.assert_close(d6[3][0], d1[3][0], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_save_load_round_trip(unet, tmp_path):
    x = _inputs()
    net = randomize_(HiFiNetModel.from_unet(unet, size_ratio=0.5, vae_scale_factor=2), seed=4, std=0.1).eval()
    net.save_pretrained(tmp_path / "hifi")
    loaded = HiFiNetModel.from_pretrained(tmp_path / "hifi").eval()
    args = (x["sample"], 10)
    kwargs = {"controlnet_cond": x["cond"], "id_tokens": x["tokens"], "added_cond_kwargs": x["added"]}
    a, b = net(*args, **kwargs), loaded(*args, **kwargs)
    assert torch.equal(a.mid_block_res_sample, b.mid_block_res_sample)
    assert len(a.down_block_res_samples) == len(b.down_block_res_samples) == 6  # one per UNet down residual
    for x_a, x_b in zip(a.down_block_res_samples, b.down_block_res_samples, strict=True):
        assert torch.equal(x_a, x_b)
    assert any(x.abs().max() > 1e-3 for x in a.down_block_res_samples)  # non-trivial outputs are compared
    ca, cb = net.prepare_condition(x["cond"], x["tokens"]), loaded.prepare_condition(x["cond"], x["tokens"])
    for fa, fb in zip(ca.features + sum(ca.id_kv, ()), cb.features + sum(cb.id_kv, ()), strict=True):
        assert torch.equal(fa, fb)


def test_gradient_checkpointing_gives_the_same_gradients(unet):
    x = _inputs()
    kwargs = {"controlnet_cond": x["cond"], "id_tokens": x["tokens"], "added_cond_kwargs": x["added"]}

    def grads(checkpointing: bool):
        net = randomize_(HiFiNetModel.from_unet(unet, size_ratio=0.5, vae_scale_factor=2), seed=4, std=0.1)
        if checkpointing:
            net.enable_gradient_checkpointing()
        assert net.is_gradient_checkpointing == checkpointing
        calls = []
        for module in net.resnets[0]:
            module.register_forward_pre_hook(lambda *a: calls.append(1))
        down, mid = net(x["sample"], 10, return_dict=False, **kwargs)
        (sum(d.square().mean() for d in down) + mid.square().mean()).backward()
        return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}, len(calls)

    plain, plain_calls = grads(False)
    checkpointed, ckpt_calls = grads(True)
    assert ckpt_calls > plain_calls  # the blocks really ran again in the backward pass
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


def test_wrong_landmark_size_is_explained(unet):
    x = _inputs()
    net = HiFiNetModel.from_unet(unet, size_ratio=0.5, vae_scale_factor=2)
    with pytest.raises(ValueError, match="landmark map must have the image size"):
        net(x["sample"], 10, controlnet_cond=x["cond"][..., :32, :32], added_cond_kwargs=x["added"])
