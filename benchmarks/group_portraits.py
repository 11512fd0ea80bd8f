"""Per-step cost of a two-person group portrait vs one person (issue 17: two people <= 1.05x one person).

What is timed (random weights, no download, classifier-free-guidance batch of 2, ``torch.inference_mode``), one
denoising step's network work = HiFi-Net's per-step branch (condition cached once per generation) + the UNet with
the decoupled ID attention (T = 16 ID tokens):

* **one person**: today's path, ``encoder_hidden_states = (text, [id_tokens])``;
* **two people**: :class:`hifi_portrait.models.RegionalIDTokens` with each person's tokens and its region from the
  automatic layout (real landmark geometry: :func:`hifi_portrait.landmarks.group.layout_group` on the canonical
  face), resized to every attention resolution; HiFi-Net's per-step ID attention masked likewise;
* **one person (again)**: the first configuration timed a second time in the same rounds, the noise floor of the
  comparison on this machine (two identical computations should read 1.00).

Configurations are interleaved round by round; reported: the minimum CPU time (``time.process_time``, one torch
thread) on CPU, where other processes on a shared machine only ever add time; the median wall time on GPUs.

    python benchmarks/group_portraits.py            # CPU, mid-size SDXL-shaped UNet at 512x512, a few minutes
    python benchmarks/group_portraits.py --quick    # seconds: the test UNet at 64 px (CI)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from hifi_portrait.landmarks.group import layout_group
from hifi_portrait.landmarks.shape import IdentityShape
from hifi_portrait.models import HiFiNetModel, RegionalIDTokens, install_id_attention, with_id_tokens
from hifi_portrait.utils.testing import SDXL_UNET_CONFIG

#: Mid-size SDXL-shaped UNet for CPU timing (benchmarks/pipeline_overhead.py's MID_UNET): SDXL's block structure,
#: ~2.5x narrower, shallower top level, SDXL's 2048-d cross-attention and micro-conditioning.
MID_UNET = {
    **SDXL_UNET_CONFIG,
    "block_out_channels": (128, 256, 512),
    "transformer_layers_per_block": (1, 2, 4),
    "attention_head_dim": (2, 4, 8),
}


def timed(fn: Callable[[], object], device: torch.device) -> float:
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = clock()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return clock() - start


def interleaved(fns: dict[str, Callable[[], object]], device: torch.device, rounds: int, warmup: int):
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(warmup + rounds):
        for name, fn in fns.items():
            t = timed(fn, device)
            if r >= warmup:
                times[name].append(t)
    pick = statistics.median if device.type == "cuda" else min
    return {k: pick(v) for k, v in times.items()}, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resolution", type=int, default=512, help="image side (square)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--num-tokens", type=int, default=16, help="T, ID tokens per person")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 on CPU)")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    parser.add_argument("--quick", action="store_true", help="seconds: the test UNet at 64 px, one round (CI)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    unet_cfg = MID_UNET
    if args.quick:
        from hifi_portrait.utils.testing import get_dummy_unet

        unet_cfg, args.resolution, args.rounds, args.warmup = dict(get_dummy_unet().config), 64, 1, 0
    res = args.resolution
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**unet_cfg).eval()
        hifi = HiFiNetModel.from_unet(unet).eval()
    with torch.no_grad():  # an untrained HiFi-Net is exactly zero; give it weights so nothing is skipped
        for conv in [*hifi.zero_convs, hifi.zero_conv_mid]:
            conv.weight.normal_(0, 1e-3)
    install_id_attention(unet, num_tokens=args.num_tokens)
    pooled_dim = unet_cfg["projection_class_embeddings_input_dim"] - 6 * unet_cfg["addition_time_embed_dim"]
    b, lat, d = 2, res // 8, unet_cfg["cross_attention_dim"]
    gen = torch.Generator().manual_seed(1)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device)

    x, t, text = rand(b, 4, lat, lat), torch.full((b,), 500.0, device=device), rand(b, 77, d)
    added = {"text_embeds": rand(b, pooled_dim), "time_ids": torch.tensor([[res, res, 0, 0, res, res]] * b)}
    added["time_ids"] = added["time_ids"].to(device=device, dtype=torch.float32)
    landmark = torch.rand(b, 3, res, res, generator=gen).to(device)
    a_tokens = torch.cat([torch.zeros(1, args.num_tokens, d), torch.randn(1, args.num_tokens, d)]).to(device)
    b_tokens = torch.cat([torch.zeros(1, args.num_tokens, d), torch.randn(1, args.num_tokens, d)]).to(device)

    # two people side by side, their regions from the automatic layout, at latent resolution
    shape = IdentityShape.canonical()
    group = layout_group([shape, shape], [None, None], size=(res, res))
    regions = F.avg_pool2d(torch.from_numpy(group.regions)[None], 8, 8).to(device)
    coverage = [round(float(r.mean()), 3) for r in regions[0]]

    with torch.inference_mode():
        cond_one = hifi.prepare_condition(landmark, a_tokens)
        cond_two = hifi.prepare_condition(landmark, RegionalIDTokens([a_tokens, b_tokens], regions))
        states_one = with_id_tokens(text, a_tokens)
        states_two = with_id_tokens(text, [a_tokens, b_tokens], regions=regions)

        def step(cond, states):
            def run():
                down, mid = hifi(x, t, condition=cond, added_cond_kwargs=added, return_dict=False)
                return unet(
                    x,
                    t,
                    states,
                    added_cond_kwargs=added,
                    down_block_additional_residuals=down,
                    mid_block_additional_residual=mid,
                ).sample

            return run

        fns = {
            "one person": step(cond_one, states_one),
            "two people": step(cond_two, states_two),
            "one person (again)": step(cond_one, states_one),
        }
        best, all_times = interleaved(fns, device, args.rounds, args.warmup)

    base = best["one person"]
    machine = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} thread(s)"
    )
    print(f"group portraits, per denoising step (CFG batch 2, {res}x{res}, T={args.num_tokens}, {machine})")
    print(f"regions: person 1 covers {coverage[0]:.1%} of the latent, person 2 {coverage[1]:.1%}")
    print("| configuration | ms / step | vs one person |")
    print("|---|---:|---:|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds * 1e3:.1f} | {seconds / base:.3f} |")
    ratio = best["two people"] / base
    print(
        f"two people / one person = {ratio:.3f} (goal <= 1.05; noise floor: {best['one person (again)'] / base:.3f})"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "resolution": res,
                    "machine": machine,
                    "seconds": best,
                    "all_seconds": all_times,
                    "ratio": ratio,
                    "region_coverage": coverage,
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "torch": torch.__version__,
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
