"""The base model of the benchmark: a small SDXL-shaped UNet and VAE, pre-trained on the world *without* conditioning.

Pre-trained first, not jointly: ``hifi-portrait train`` keeps the base UNet and VAE frozen (as with real SDXL),
so the base must already model the world's images before the adapter is trained; this module does that with a
plain loop (VAE: reconstruction + a small KL term; UNet: epsilon-prediction diffusion loss with the constant
caption and SDXL micro-conditioning, as the adapter's training feeds it), then saves a diffusers SDXL folder that
``model.pretrained_model_name_or_path`` points to. The text encoders and tokenizers are the tiny random ones of
:mod:`hifi_portrait.utils.testing` (the caption is the same for every image, so text carries nothing).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.learnability import world as W


@dataclass
class BaseReport:
    vae_losses: list[float] = field(default_factory=list)
    unet_losses: list[float] = field(default_factory=list)
    scaling_factor: float = 1.0
    seconds: float = 0.0


def make_vae():
    """SDXL-type ``AutoencoderKL`` (4 latent channels), 4x downsampling, narrow (CPU budget), no attention."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[8, 16, 32],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
        latent_channels=4,
        norm_num_groups=8,
        mid_block_add_attention=False,
    )


def make_unet(sample_size: int):
    """SDXL-shaped UNet (``text_time`` added conditioning, linear-projection transformer blocks, cross-attention to
    the 64-d tiny text encoders), two levels, small widths."""
    from hifi_portrait.utils.testing import get_dummy_unet

    return get_dummy_unet(
        seed=None,
        layers_per_block=1,
        sample_size=sample_size,
        transformer_layers_per_block=(1, 1),
        norm_num_groups=16,
    )


def world_images(seed: int, identities: list[int], images: int, size: int) -> torch.Tensor:
    """``(N, 3, S, S)`` renders in ``[-1, 1]`` of ``identities`` at image indices ``0..images-1`` (the training
    identities' images: the same pictures the adapter's dataset holds)."""
    out = []
    for i in identities:
        ident = W.make_identity(seed, i)
        for j in range(images):
            out.append(W.render_identity(ident, W.make_view(seed, i, j), size)[0])
    x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def pretrain_base(
    out_dir: str | Path,
    images: torch.Tensor,
    vae_steps: int,
    unet_steps: int,
    batch_size: int = 16,
    seed: int = 0,
    log=print,
) -> BaseReport:
    """Train the tiny VAE then the tiny UNet on ``images`` and save the SDXL folder to ``out_dir``."""
    from diffusers import DDPMScheduler, StableDiffusionXLPipeline

    from hifi_portrait.training.text import encode_prompts, time_ids
    from hifi_portrait.utils.testing import get_dummy_components

    t0 = time.perf_counter()
    report = BaseReport()
    comps = get_dummy_components(seed=seed, with_image_encoder=False)
    comps.pop("image_encoder"), comps.pop("feature_extractor")
    torch.manual_seed(seed)
    comps["vae"] = vae = make_vae()
    torch.manual_seed(seed)
    comps["unet"] = unet = make_unet(images.shape[-1] // 4)
    gen = torch.Generator().manual_seed(seed)
    n = len(images)

    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    vae.train()
    for step in range(vae_steps):
        x = images[torch.randint(n, (batch_size,), generator=gen)]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        kl = post.kl().mean() / z[0].numel()
        loss = F.mse_loss(rec, x) + 1e-4 * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        report.vae_losses.append(loss.item())
        if step % 100 == 0:
            log(f"vae step {step}/{vae_steps}: loss {loss.item():.4f}")
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        lat = torch.cat([vae.encode(images[i : i + 64]).latent_dist.mean for i in range(0, min(n, 512), 64)])
    report.scaling_factor = float(1.0 / lat.std())
    vae.register_to_config(scaling_factor=report.scaling_factor)

    scheduler = DDPMScheduler.from_config(comps["scheduler"].config)
    with torch.no_grad():
        prompt, pooled = encode_prompts(
            [W.CAPTION], [comps["tokenizer"], comps["tokenizer_2"]], [comps["text_encoder"], comps["text_encoder_2"]]
        )
    size = images.shape[-1]
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3, weight_decay=0.0)
    lr = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    unet.train()
    for step in range(unet_steps):
        x = images[torch.randint(n, (batch_size,), generator=gen)]
        with torch.no_grad():
            post = vae.encode(x).latent_dist
            lat = (post.mean + post.std * torch.randn(post.mean.shape, generator=gen)) * report.scaling_factor
        noise = torch.randn(lat.shape, generator=gen)
        t = torch.randint(scheduler.config.num_train_timesteps, (batch_size,), generator=gen)
        noisy = scheduler.add_noise(lat, noise, t)
        pred = unet(
            noisy,
            t,
            encoder_hidden_states=prompt.expand(batch_size, -1, -1),
            added_cond_kwargs={"text_embeds": pooled.expand(batch_size, -1), "time_ids": time_ids(batch_size, size)},
        ).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        lr.step()
        report.unet_losses.append(loss.item())
        if step % 100 == 0:
            log(f"unet step {step}/{unet_steps}: loss {loss.item():.4f}")
    unet.eval().requires_grad_(False)
    StableDiffusionXLPipeline(**comps).save_pretrained(out_dir)
    report.seconds = time.perf_counter() - t0
    return report
