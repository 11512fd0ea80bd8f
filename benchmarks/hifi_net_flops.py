"""FLOPs per denoising step of the full SDXL UNet architecture with and without HiFi-Portrait's parts.

Counted with ``torch.utils.flop_counter`` on the ``meta`` device (no weights, no memory, any machine, seconds):
plain UNet, UNet + ID attention, HiFi-Net's per-step branch (light and full-size), its once-per-generation
condition part, and a diffusers ControlNet copy (InstantID's IdentityNet design). FLOPs are not wall time
(kernel launches, memory traffic): see benchmarks/pipeline_overhead.py for timings.

    python benchmarks/hifi_net_flops.py [--resolution 1024] [--num-tokens 16] [--size-ratio 0.1]
    python benchmarks/hifi_net_flops.py --quick   # 256 px (CI)
"""

from __future__ import annotations

import argparse

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode

from hifi_portrait.models import HiFiNetModel, install_id_attention, with_id_tokens
from hifi_portrait.utils.testing import SDXL_UNET_CONFIG as SDXL_UNET  # the SDXL base UNet architecture


def count(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--num-tokens", type=int, default=16)
    parser.add_argument("--size-ratio", type=float, default=0.1)
    parser.add_argument("--quick", action="store_true", help="seconds: smallest sizes, one round (CI checks it runs)")
    args = parser.parse_args()
    config = SDXL_UNET
    if args.quick:  # the test UNet at 256 px: checks that the script runs (the numbers mean nothing)
        from hifi_portrait.utils.testing import get_dummy_unet

        args.resolution, config = 256, dict(get_dummy_unet().config)
    meta = torch.device("meta")
    with meta:
        unet = UNet2DConditionModel(**config)
        light = HiFiNetModel.from_unet(unet, size_ratio=args.size_ratio)
        full = HiFiNetModel.from_unet(unet, size_ratio=1.0, branch_layers_per_block=2, copy_unet_weights=False)
        controlnet = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
    b, h = 2, args.resolution // 8  # batch 2 = classifier-free guidance
    x = torch.empty(b, 4, h, h, device=meta)
    t = torch.full((b,), 500.0, device=meta)
    dim = config["cross_attention_dim"]
    pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
    text = torch.empty(b, 77, dim, device=meta)
    added = {"text_embeds": torch.empty(b, pooled, device=meta), "time_ids": torch.empty(b, 6, device=meta)}
    cond = torch.empty(b, 3, args.resolution, args.resolution, device=meta)
    tokens = torch.empty(b, args.num_tokens, dim, device=meta)
    with torch.no_grad():
        plain = count(lambda: unet(x, t, text, added_cond_kwargs=added))
        once = count(lambda: light.prepare_condition(cond, tokens))
        c_light, c_full = light.prepare_condition(cond, tokens), full.prepare_condition(cond, tokens)
        step_light = count(lambda: light(x, t, condition=c_light, added_cond_kwargs=added))
        step_full = count(lambda: full(x, t, condition=c_full, added_cond_kwargs=added))
        cn = count(lambda: controlnet(x, t, text, controlnet_cond=cond, added_cond_kwargs=added))
        install_id_attention(unet, args.num_tokens)
        with_ip = count(lambda: unet(x, t, with_id_tokens(text, tokens), added_cond_kwargs=added))
    params = {
        n: sum(p.numel() for p in m.parameters()) / 1e6
        for n, m in (("unet", unet), ("hifi_light", light), ("hifi_full", full), ("controlnet", controlnet))
    }
    arch = "the test UNet (--quick: the numbers mean nothing)" if args.quick else "SDXL UNet architecture"
    print(f"{arch}, {args.resolution}x{args.resolution}, CFG batch 2, T={args.num_tokens} ID tokens")
    print(f"parameters (M): {', '.join(f'{k} {v:.1f}' for k, v in params.items())}")
    print(
        f"TFLOPs/step: plain UNet {plain:.3f} | UNet + ID attention {with_ip:.3f} | HiFi-Net light {step_light:.4f}"
        f" | HiFi-Net full-size {step_full:.3f} | ControlNet copy {cn:.3f}"
    )
    print(f"TFLOPs once per generation (HiFi-Net condition part): {once:.4f}")
    ratios = ((with_ip + step_light) / plain, (with_ip + step_full) / plain, (with_ip + cn) / plain)
    print(
        "per-step ratio vs plain: ours light {:.3f} | ours full-size {:.3f} | "
        "ControlNet + ID attention (InstantID-like) {:.3f}".format(*ratios)
    )


if __name__ == "__main__":
    main()
