"""Benchmark of one HiFi-Portrait training step: it/s and peak memory, with and without gradient checkpointing.

    python benchmarks/train_step.py --unet sdxl --resolution 1024 --batch-size 1 --dtype bf16   # on a GPU
    python benchmarks/train_step.py --unet mid --resolution 256 --batch-size 1 --steps 3         # CPU-sized
    python benchmarks/train_step.py --unet tiny --resolution 64 --batch-size 2 --write
    python benchmarks/train_step.py --quick   # tiny UNet, 64 px, one step per variant (CI)

What runs: the training model of ``hifi_portrait.training`` (frozen UNet with ID attention processors installed,
trainable FaceRefiner + HiFi-Net + ID attention) built with random weights from a UNet config: ``sdxl`` is the full
SDXL-base UNet architecture (2.6 B parameters), ``mid`` the same block structure with smaller widths, ``tiny`` the
test UNet. One step = forward of refiner, HiFi-Net and UNet on random latents / text embeddings / 4 references,
MSE loss, backward, AdamW step on the trainable parameters. The VAE encode and the text encoders are not included
(constant per step, and commonly precomputed); the references' patch tokens are random (257 x 1280 as from CLIP
ViT-H/14). Each variant (with / without gradient checkpointing) runs in its own subprocess so that peak memory
is per variant: on CUDA ``torch.cuda.max_memory_allocated``, on CPU the process's peak RSS (dominated by weights
and optimizer state there). Also reported: the bytes of tensors saved for backward during one step (hooked with
``torch.autograd.graph.saved_tensors_hooks``), the activation memory that gradient checkpointing reduces.

``--write`` appends a Markdown table row per variant to benchmarks/results/train_step.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from hifi_portrait.utils.testing import SDXL_UNET_CONFIG as SDXL_UNET  # the SDXL base UNet architecture

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "train_step.md"

MID_UNET = {
    **SDXL_UNET,
    "block_out_channels": (64, 128, 256),
    "transformer_layers_per_block": (1, 1, 2),
    "attention_head_dim": (2, 4, 8),
    "norm_num_groups": 32,
}


def unet_config(name: str) -> dict:
    if name == "sdxl":
        return dict(SDXL_UNET)
    if name == "mid":
        return dict(MID_UNET)
    if name == "tiny":
        from hifi_portrait.utils.testing import get_dummy_unet

        return dict(get_dummy_unet().config)
    raise SystemExit(f"unknown --unet {name!r}: sdxl, mid or tiny")


def run_variant(args: argparse.Namespace) -> dict:
    """One variant in this process: build, warm up, time ``args.steps`` steps; returns the measurements."""
    import torch
    from diffusers import UNet2DConditionModel

    from hifi_portrait.models.face_refiner import FaceRefiner
    from hifi_portrait.models.hifi_net import HiFiNetModel
    from hifi_portrait.models.id_attention import install_id_attention
    from hifi_portrait.training.modules import HiFiPortraitTrainingModel

    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    cfg = unet_config(args.unet)
    unet = UNet2DConditionModel(**{k: v for k, v in cfg.items() if not k.startswith("_")})
    cross = unet.config.cross_attention_dim
    small = args.unet == "tiny"
    refiner = FaceRefiner(
        id_embed_dim=512,
        patch_dim=32 if small else 1280,
        num_patches=17 if small else 257,
        hidden_dim=32 if small else 768,
        num_tokens=4 if small else 16,
        output_dim=cross,
        num_layers=1 if small else 4,
        num_heads=4 if small else 12,
    )
    hifi_kw = {"size_ratio": args.size_ratio}
    if small:
        hifi_kw.update(attention_head_dim=8, conditioning_embedding_channels=(8, 16), vae_scale_factor=8)
    hifi = HiFiNetModel.from_unet(unet, **hifi_kw)
    procs = install_id_attention(unet, num_tokens=refiner.config.num_tokens)
    model = HiFiPortraitTrainingModel(unet, refiner, hifi, procs)
    unet.requires_grad_(False)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.to(device, dtype)
    for m in model.trainable_modules().values():
        m.requires_grad_(True)
        m.to(device, torch.float32)
    params = model.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=1e-5)

    b, r = args.batch_size, args.resolution
    lat = r // 8
    n_refs, n_patch, d_patch = 4, refiner.config.num_patches, refiner.config.patch_dim
    text_dim = cross
    pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim

    def batch():
        g = torch.Generator().manual_seed(1)
        return dict(
            noisy_latents=torch.randn(b, 4, lat, lat, generator=g).to(device, dtype),
            timesteps=torch.randint(0, 1000, (b,), generator=g).to(device),
            prompt_embeds=torch.randn(b, 77, text_dim, generator=g).to(device, dtype),
            added_cond_kwargs={
                "text_embeds": torch.randn(b, pooled, generator=g).to(device, dtype),
                "time_ids": torch.tensor([[r, r, 0, 0, r, r]] * b, dtype=torch.float32).to(device, dtype),
            },
            landmark_map=torch.rand(b, 3, r, r, generator=g).to(device, dtype),
            id_embeds=torch.randn(b, n_refs, 512, generator=g).to(device),
            patch_tokens=torch.randn(b, n_refs, n_patch, d_patch, generator=g).to(device),
            quality=torch.ones(b, n_refs, device=device),
            ref_mask=torch.ones(b, n_refs, dtype=torch.bool, device=device),
        )

    inputs = batch()
    target = torch.randn(b, 4, lat, lat).to(device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step():
        with autocast:
            pred = model(**inputs)
        loss = torch.nn.functional.mse_loss(pred.float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    # bytes of tensors kept for backward during one step (what gradient checkpointing trades for recompute);
    # device-independent, unlike CPU RSS which the weights and the allocator cache dominate
    saved: dict[int, int] = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    saved_gib = sum(saved.values()) / 2**30
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = (time.perf_counter() - t0) / args.steps
    if device.type == "cuda":
        peak_gib = torch.cuda.max_memory_allocated() / 2**30
        mem_kind = "CUDA max allocated"
    else:
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
        mem_kind = "process peak RSS"
    n_unet = sum(p.numel() for p in unet.parameters()) - sum(p.numel() for m in procs.values() for p in m.parameters())
    return {
        "unet": args.unet,
        "unet_params_M": round(n_unet / 1e6, 1),
        "trainable_params_M": round(sum(p.numel() for p in params) / 1e6, 1),
        "resolution": r,
        "batch_size": b,
        "dtype": args.dtype,
        "gradient_checkpointing": bool(args.gradient_checkpointing),
        "seconds_per_step": round(seconds, 4),
        "it_per_s": round(1.0 / seconds, 3),
        "peak_memory_GiB": round(peak_gib, 2),
        "saved_for_backward_GiB": round(saved_gib, 3),
        "memory_kind": mem_kind,
        "load_avg_1min": round(__import__("os").getloadavg()[0], 2),
        "device": torch.cuda.get_device_name(0)
        if device.type == "cuda"
        else f"CPU ({platform.processor() or 'x86'}), {torch.get_num_threads()} threads",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unet", default="mid", choices=["sdxl", "mid", "tiny"])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--size-ratio", type=float, default=0.1, help="HiFi-Net width relative to the UNet")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument(
        "--gradient-checkpointing",
        type=int,
        choices=[0, 1],
        default=None,
        help="run only this variant in-process (internal); default: both, in subprocesses",
    )
    parser.add_argument("--write", action="store_true", help="append the results to benchmarks/results/train_step.md")
    parser.add_argument("--quick", action="store_true", help="seconds: smallest sizes, one round (CI checks it runs)")
    args = parser.parse_args()
    if args.quick:
        args.unet, args.resolution, args.steps, args.warmup = "tiny", 64, 1, 0
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.gradient_checkpointing is not None:
        print(json.dumps(run_variant(args)))
        return
    if args.quick:  # both variants in this process: no per-variant peak memory, but seconds instead of a minute
        for gc in (0, 1):
            print(json.dumps(run_variant(argparse.Namespace(**{**vars(args), "gradient_checkpointing": gc}))))
        return
    rows = []
    for gc in (0, 1):
        cmd = (
            [sys.executable, __file__]
            + [a for a in sys.argv[1:] if a != "--write"]
            + [
                "--gradient-checkpointing",
                str(gc),
                "--device",
                args.device,
            ]
        )
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"variant gradient_checkpointing={gc} failed (exit {out.returncode})")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row))
    if args.write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        new = not RESULTS.exists()
        with RESULTS.open("a") as f:
            if new:
                f.write("# Training step benchmark (`benchmarks/train_step.py`)\n\n")
            f.write(f"\n## {datetime.date.today()} — {rows[0]['device']}\n\n")
            f.write(f"`python benchmarks/train_step.py {' '.join(a for a in sys.argv[1:] if a != '--write')}`")
            f.write(f" (1-min load average at the end: {', '.join(str(r['load_avg_1min']) for r in rows)})\n\n")
            f.write(
                "| UNet | UNet params (M) | trainable (M) | res | batch | dtype | grad. ckpt | s/step | it/s | "
                "peak memory (GiB) | saved for backward (GiB) |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
            )
            for r in rows:
                f.write(
                    f"| {r['unet']} | {r['unet_params_M']} | {r['trainable_params_M']} | {r['resolution']} | "
                    f"{r['batch_size']} | {r['dtype']} | {'yes' if r['gradient_checkpointing'] else 'no'} | "
                    f"{r['seconds_per_step']} | {r['it_per_s']} | {r['peak_memory_GiB']} ({r['memory_kind']}) | "
                    f"{r['saved_for_backward_GiB']} |\n"
                )


if __name__ == "__main__":
    main()
