"""Per-step cost of HiFi-Portrait's conditioning vs plain SDXL and an InstantID-style ControlNet, in one run.

What is timed (random weights, no download, classifier-free-guidance batch of 2, ``torch.inference_mode``):

* **plain**: one SDXL UNet call (a denoising step's network work);
* **ours**: HiFi-Net's per-step branch with its condition cached (computed once per generation) + the UNet with
  the decoupled ID attention (T ID tokens appended to the text);
* **InstantID-style**: a full ControlNet copy of the UNet encoder (``ControlNetModel.from_unet``, IdentityNet's
  design, reading the ID tokens and the keypoint image every step) + the same ID attention;
* breakdown of ours (profile): UNet + ID attention alone, HiFi-Net branch alone;
* **N = 8 vs N = 1 references**: per step (the refiner emits T tokens whatever N is), and end to end
  = encode once (CLIP vision tower on N crops + face refiner + HiFi-Net condition) + ``--steps`` x per-step.

Steps of all configurations are interleaved round by round, so that load from other processes affects every
configuration alike; reported: the median wall time on GPUs, the minimum CPU time (``time.process_time``, one
thread) on CPU, where other processes on a shared machine only ever add time.

Configurations:

* default (``mid``, for CPU): an SDXL-shaped UNet at reduced width/depth -- ``block_out_channels=(128, 256, 512)``,
  ``transformer_layers_per_block=(1, 2, 4)``, 64 channels per head, SDXL's cross-attention (2048) and micro-
  conditioning sizes -- at 512x512 (its attention levels then see 1024 and 256 tokens, against SDXL's 4096 and
  1024 at 1024^2; at 256x256 the constant per-step projections of the 2048-d text and ID tokens weigh several
  times more than in SDXL), and a mid CLIP vision tower (hidden 384, 8 layers, 257 tokens at 224 px);
* ``--full``: the SDXL base UNet architecture (``SDXL_UNET``, built from its config dict) and CLIP ViT-H/14
  (IP-Adapter's image encoder) at ``--resolution`` (1024 by default with ``--full``); with ``--device cuda`` the
  peak memory (``torch.cuda.max_memory_allocated``) of each configuration's resident models is reported too.

    python benchmarks/pipeline_overhead.py                                   # CPU, mid-size, ~5 minutes
    python benchmarks/pipeline_overhead.py --full --device cuda --dtype fp16 # GPU, SDXL architecture at 1024^2
    python benchmarks/pipeline_overhead.py --quick                           # seconds: the test UNet, 64 px (CI)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from hifi_portrait.models import FaceRefiner, HiFiNetModel, install_id_attention, with_id_tokens
from hifi_portrait.utils.testing import SDXL_UNET_CONFIG as SDXL_UNET  # the SDXL base UNet architecture

#: Mid-size SDXL-shaped UNet for CPU timing (same block structure, ~2.5x narrower, shallower top level).
MID_UNET = {
    **SDXL_UNET,
    "block_out_channels": (128, 256, 512),
    "transformer_layers_per_block": (1, 2, 4),
    "attention_head_dim": (2, 4, 8),
}
#: CLIP ViT-H/14 vision tower (laion, IP-Adapter's image_encoder): 257 x 1280 tokens at 224 px.
VIT_H = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 224,
    "projection_dim": 1024,
}
#: Mid CLIP vision tower, scaled with MID_UNET so that (CLIP FLOPs per image) / (UNet FLOPs per CFG step) is about
#: the same as ViT-H/14 vs the SDXL UNet at 1024^2 (0.025; here 0.0087 / 0.350 TFLOPs at 512^2): 257 x 384 tokens.
VIT_MID = {
    "hidden_size": 384,
    "intermediate_size": 1536,
    "num_hidden_layers": 8,
    "num_attention_heads": 6,
    "patch_size": 14,
    "image_size": 224,
    "projection_dim": 384,
}


#: A tiny CLIP vision tower for ``--quick`` (257 tokens like the real ones, at toy width).
VIT_TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "patch_size": 14,
    "image_size": 224,
    "projection_dim": 32,
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call: wall time on GPUs; on CPU the process's CPU time, which other processes competing for
    the cores (a shared machine) disturb much less than wall time."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    sync(device)
    start = clock()
    fn()
    sync(device)
    return clock() - start


def interleaved(
    fns: dict[str, Callable[[], object]],
    device: torch.device,
    rounds: int,
    warmup: int,
    before: dict[str, Callable[[], None]] | None = None,
) -> dict[str, float]:
    """Seconds per call of each function, timed round-robin (``before[name]`` runs untimed first): the median on
    GPUs, the minimum on CPU (competing processes only ever add time: the minimum is the least disturbed run)."""
    before = before or {}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(warmup + rounds):
        for name, fn in fns.items():
            if name in before:
                before[name]()
            t = timed(fn, device)
            if r >= warmup:
                times[name].append(t)
    pick = statistics.median if device.type == "cuda" else min
    return {k: pick(v) for k, v in times.items()}


def params_mb(module: torch.nn.Module | list, bytes_per: int) -> float:
    mods = module if isinstance(module, list) else [module]
    return sum(p.numel() for m in mods for p in m.parameters()) * bytes_per / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="full SDXL UNet architecture + CLIP ViT-H/14")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--resolution", type=int, default=None, help="image side (default 512 mid, 1024 full)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30, help="denoising steps for the end-to-end N comparison")
    parser.add_argument("--num-tokens", type=int, default=16, help="T, ID tokens")
    parser.add_argument("--size-ratio", type=float, default=None, help="HiFi-Net width (default: the model's)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 on CPU)")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    parser.add_argument("--quick", action="store_true", help="seconds: smallest sizes, one round (CI checks it runs)")
    args = parser.parse_args()
    if args.quick:
        args.full, args.resolution, args.rounds, args.warmup, args.steps = False, 64, 1, 0, 2

    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    if device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    elif args.threads:
        torch.set_num_threads(args.threads)
    res = args.resolution or (1024 if args.full else 512)
    unet_cfg, vit_cfg = (SDXL_UNET, VIT_H) if args.full else (MID_UNET, VIT_MID)
    if args.quick:
        from hifi_portrait.utils.testing import get_dummy_unet

        unet_cfg, vit_cfg = dict(get_dummy_unet().config), VIT_TINY
    # SDXL's pooled text embedding: what the added-condition projection takes besides the 6 time ids
    pooled_dim = unet_cfg["projection_class_embeddings_input_dim"] - 6 * unet_cfg["addition_time_embed_dim"]
    nbytes = torch.finfo(dtype).bits // 8

    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**unet_cfg)
        hifi_kwargs = {} if args.size_ratio is None else {"size_ratio": args.size_ratio}
        hifi = HiFiNetModel.from_unet(unet, **hifi_kwargs)
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 96, 256))
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**vit_cfg))
        refiner = FaceRefiner(
            id_embed_dim=512,
            patch_dim=vit_cfg["hidden_size"],
            num_patches=257,
            num_tokens=args.num_tokens,
            output_dim=unet_cfg["cross_attention_dim"],
        )
    for m in (unet, hifi, controlnet, encoder, refiner):
        m.to(dtype).eval()
    with torch.no_grad():  # an untrained HiFi-Net is exactly zero; give it weights so nothing is skipped
        for conv in [*hifi.zero_convs, hifi.zero_conv_mid]:
            conv.weight.normal_(0, 1e-3)
    plain_procs = dict(unet.attn_processors)
    id_procs_map = install_id_attention(unet, num_tokens=args.num_tokens)
    id_procs = dict(unet.attn_processors)

    b, h, d = 2, res // 8, unet_cfg["cross_attention_dim"]  # CFG batch
    gen = torch.Generator(device="cpu").manual_seed(1)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    x = rand(b, 4, h, h)
    t = torch.full((b,), 500.0, device=device)
    text = rand(b, 77, d)
    added = {
        "text_embeds": rand(b, pooled_dim),
        "time_ids": torch.tensor([[res, res, 0, 0, res, res]] * b, device=device, dtype=dtype),
    }
    landmark = torch.rand(b, 3, res, res, generator=gen).to(device=device, dtype=dtype)

    def encode(n: int) -> tuple[torch.Tensor, object]:
        """References -> ID tokens (CFG: zero tokens + tokens) -> cached HiFi-Net condition, once per generation."""
        pixels = torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(n)).to(device, dtype)
        ids = torch.nn.functional.normalize(torch.randn(1, n, 512, generator=torch.Generator().manual_seed(n)), dim=-1)
        patches = encoder(pixels, output_hidden_states=True).hidden_states[-2]
        tokens = refiner(ids.to(device, dtype), patches[None], torch.ones(1, n, device=device))
        tokens_cfg = torch.cat([torch.zeros_like(tokens), tokens])
        return tokens_cfg, hifi.prepare_condition(landmark, tokens_cfg)

    with torch.inference_mode():
        tokens1, cond1 = encode(1)
        tokens8, cond8 = encode(8)
        with_ids1, with_ids8 = with_id_tokens(text, tokens1), with_id_tokens(text, tokens8)

        def use(procs):
            return lambda: unet.set_attn_processor(dict(procs))

        def step_plain():
            return unet(x, t, text, added_cond_kwargs=added)

        def step_unet_id():
            return unet(x, t, with_ids1, added_cond_kwargs=added)

        def step_branch():
            return hifi(x, t, condition=cond1, added_cond_kwargs=added, return_dict=False)

        def step_ours(cond=cond1, states=with_ids1):
            down, mid = hifi(x, t, condition=cond, added_cond_kwargs=added, return_dict=False)
            return unet(
                x,
                t,
                states,
                added_cond_kwargs=added,
                down_block_additional_residuals=down,
                mid_block_additional_residual=mid,
            )

        def step_instantid():
            down, mid = controlnet(
                x,
                t,
                encoder_hidden_states=tokens1,
                controlnet_cond=landmark,
                added_cond_kwargs=added,
                return_dict=False,
            )
            return unet(
                x,
                t,
                with_ids1,
                added_cond_kwargs=added,
                down_block_additional_residuals=down,
                mid_block_additional_residual=mid,
            )

        fns = {
            "plain": step_plain,
            "ours": step_ours,  # with the tokens of N=1 reference
            "ours_n8": lambda: step_ours(cond8, with_ids8),
            "instantid": step_instantid,
            "unet_id_attn": step_unet_id,
            "hifi_branch": step_branch,
        }
        before = {k: use(plain_procs if k == "plain" else id_procs) for k in fns}
        step = interleaved(fns, device, args.rounds, args.warmup, before)
        enc = interleaved({"n1": lambda: encode(1), "n8": lambda: encode(8)}, device, args.rounds, args.warmup)

        peak = {}
        if device.type == "cuda":
            parts = {
                "unet": unet,
                "id_attn": list(id_procs_map.values()),
                "hifi": hifi,
                "controlnet": controlnet,
                "encoder": encoder,
                "refiner": refiner,
            }
            setups = {
                "plain": (["unet"], step_plain, plain_procs),
                "ours": (["unet", "id_attn", "hifi", "refiner"], step_ours, id_procs),
                "ours+encoder": (["unet", "id_attn", "hifi", "refiner", "encoder"], step_ours, id_procs),
                "instantid": (["unet", "id_attn", "controlnet"], step_instantid, id_procs),
            }
            for name, (resident, fn, procs) in setups.items():
                unet.set_attn_processor(dict(procs))
                for key, mods in parts.items():
                    for m in mods if isinstance(mods, list) else [mods]:
                        m.to("cpu" if key not in resident else device)
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                for _ in range(2):
                    fn()
                sync(device)
                peak[name] = torch.cuda.max_memory_allocated(device) / 2**30

    # the same per-step time for both N (the step is the same computation: T tokens whatever N); see ours_n8
    e2e = {n: enc[f"n{n}"] + args.steps * step["ours"] for n in (1, 8)}
    sizes = {
        "unet": params_mb(unet, nbytes) - params_mb(list(id_procs_map.values()), nbytes),
        "id_attn": params_mb(list(id_procs_map.values()), nbytes),
        "hifi_net": params_mb(hifi, nbytes),
        "controlnet": params_mb(controlnet, nbytes),
        "refiner": params_mb(refiner, nbytes),
        "image_encoder": params_mb(encoder, nbytes),
    }

    name = "SDXL base UNet architecture + CLIP ViT-H/14" if args.full else "mid-size SDXL-shaped UNet (MID_UNET)"
    if args.quick:
        name = "the test UNet (--quick: checks that the script runs; the numbers mean nothing)"
    hw = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} thread(s)"
    )
    stat = "median" if device.type == "cuda" else "minimum CPU time"
    print(
        f"# pipeline overhead: {name}, {res}x{res}, {args.dtype}, CFG batch 2, T={args.num_tokens}, "
        f"HiFi-Net size_ratio={hifi.config.size_ratio}, {stat} of {args.rounds} interleaved rounds"
    )
    print(f"device: {hw}; torch {torch.__version__}")
    print("\n| configuration | ms / step | vs plain |\n|---|---|---|")
    rows = [
        ("plain SDXL UNet", "plain"),
        ("ours: HiFi-Net (cached condition) + ID attention", "ours"),
        ("InstantID-style: ControlNet copy + ID attention", "instantid"),
        ("  profile: UNet + ID attention only", "unet_id_attn"),
        ("  profile: HiFi-Net branch only", "hifi_branch"),
        ("ours with the ID tokens of N=8 references (vs N=1 above)", "ours_n8"),
    ]
    for label, key in rows:
        print(f"| {label} | {step[key] * 1e3:.1f} | {step[key] / step['plain']:.3f} |")
    print(
        f"\nencode once (CLIP on N crops + refiner + HiFi-Net condition): N=1 {enc['n1'] * 1e3:.1f} ms, "
        f"N=8 {enc['n8'] * 1e3:.1f} ms"
    )
    print(
        f"end to end (encode + {args.steps} steps): N=1 {e2e[1]:.2f} s, N=8 {e2e[8]:.2f} s, "
        f"N=8/N=1 = {e2e[8] / e2e[1]:.4f}; per step N=8/N=1 = {step['ours_n8'] / step['ours']:.4f}"
    )
    print("parameters (MB at this dtype): " + ", ".join(f"{k} {v:.0f}" for k, v in sizes.items()))
    if peak:
        print("\n| resident during denoising | peak GiB | vs plain |\n|---|---|---|")
        for key, value in peak.items():
            print(f"| {key} | {value:.2f} | +{value - peak['plain']:.2f} |")
    goals = {
        "ours/plain <= 1.15": step["ours"] / step["plain"] <= 1.15,
        "N=8/N=1 end to end <= 1.02": e2e[8] / e2e[1] <= 1.02,
    }
    if peak:
        goals["peak(ours) <= peak(plain) + 1.5 GB"] = peak["ours"] - peak["plain"] <= 1.5 * 1e9 / 2**30
    print("\ngoals: " + "; ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in goals.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "args": vars(args),
                    "resolution": res,
                    "step_s": step,
                    "encode_s": enc,
                    "e2e_s": e2e,
                    "params_mb": sizes,
                    "peak_gib": peak,
                    "goals": goals,
                    "device": hw,
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
