"""The learnability experiment: world -> evaluators -> base pre-training -> `hifi-portrait train` -> generation with
ablations -> metrics. Deterministic from ``--seed`` (single-threaded CPU runs).

Stages and what each one writes under the run folder:

1. ``data/train`` (training identities) and ``data/eval`` (held-out identities: 4 references + 1 target each),
   both in the format ``build-dataset`` writes (:mod:`benchmarks.learnability.world`);
2. evaluators: identity classifier over the held-out identities and a pose regressor, trained on other renders
   of the held-out identities (:mod:`benchmarks.learnability.evaluators`);
3. ``base/``: the small SDXL-shaped UNet + VAE pre-trained on the training world without conditioning
   (:mod:`benchmarks.learnability.base`);
4. ``adapter/``: our unchanged ``hifi-portrait train`` (a subprocess) with ``benchmarks/learnability/config.yaml``;
5. generation on every held-out target with the pipeline (``pipe.load_hifi_portrait``), conditions: ``refs4``
   (4 references + landmark map), ``refs1`` (1 reference), ``wrong_refs`` (4 references of another held-out
   identity), ``no_refs`` (zero ID tokens, the trained "no identity"), ``no_map`` (empty landmark map) and
   ``uniform_q`` (4 references fused with equal quality weights instead of their qualities);
6. metrics: identity top-1 of the generated images among the held-out identities (chance 1/K), and pose error
   (mean absolute yaw/pitch/roll error in degrees of the pose regressor's reading against the commanded pose).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.learnability import world as W
from benchmarks.learnability.base import pretrain_base, world_images
from benchmarks.learnability.evaluators import identity_scores, predict_pose, train_evaluators

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "config.yaml"
EVAL_BASE = 100_000  # held-out identities are numbered from here (disjoint from the training identities)
CONDITIONS = ("refs4", "refs1", "wrong_refs", "no_refs", "no_map", "uniform_q")


@dataclass
class Preset:
    train_ids: int
    eval_ids: int
    train_images: int  # per training identity (the last 2 are targets)
    evaluator_images: int
    evaluator_epochs: int
    vae_steps: int
    unet_steps: int
    base_batch: int
    adapter_steps: int
    inference_steps: int
    guidance_scale: float
    gen_seeds: int
    adapter_overrides: tuple[str, ...] = ()


PRESETS = {
    # CI smoke test: minutes on 2 cores; checks that conditioning reaches the output, not that it is learned
    "quick": Preset(12, 6, 4, 6, 2, 20, 20, 8, 12, 4, 1.0, 1, ("optim.lr_warmup_steps=0", "optim.learning_rate=5e-3")),
    # the experiment (>= 200 training and >= 50 held-out identities), its step counts cut to what fits
    # in about 40 minutes on 2 *shared* CPU cores (an adapter step of batch 8 took ~3 s there)
    "full": Preset(200, 50, 6, 12, 5, 300, 800, 16, 400, 10, 1.0, 2),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make_worlds(run: Path, seed: int, p: Preset) -> tuple[Path, Path]:
    train = W.write_world(run / "data" / "train", seed, range(p.train_ids), p.train_images, 2)
    held = W.write_world(run / "data" / "eval", seed, range(EVAL_BASE, EVAL_BASE + p.eval_ids), 5, 1)
    return train, held


def train_adapter(run: Path, base: Path, data: Path, seed: int, steps: int, extra: list[str] = ()) -> Path:
    """Run ``hifi-portrait train`` (unchanged, in a subprocess) with the benchmark's config; returns the run folder."""
    import hifi_portrait

    out = run / "adapter"
    src = str(Path(hifi_portrait.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    cmd = [
        sys.executable,
        "-m",
        "hifi_portrait.cli.main",
        "train",
        "--config",
        str(CONFIG),
        "--set",
        f"model.pretrained_model_name_or_path={base}",
        "--set",
        f"data.train_data_dir={data}",
        "--set",
        f"train.output_dir={out}",
        "--set",
        f"train.max_train_steps={steps}",
        "--set",
        f"train.seed={seed}",
        *[x for s in extra for x in ("--set", s)],
    ]
    log("adapter: " + " ".join(cmd[1:]))
    subprocess.run(cmd, check=True, env=env)
    return out


def read_losses(run_dir: Path) -> list[float]:
    """The per-step ``loss`` scalars the training run logged to TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[int, float] = {}
    for events in sorted((run_dir / "logs").rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if "loss" in acc.Tags().get("scalars", []):
            values.update({e.step: e.value for e in acc.Scalars("loss")})
    return [values[k] for k in sorted(values)]


def load_pipeline(base: Path, adapter: Path):
    from hifi_portrait.pipelines import StableDiffusionXLHiFiPortraitPipeline

    pipe = StableDiffusionXLHiFiPortraitPipeline.from_pretrained(base, image_encoder=None, feature_extractor=None)
    pipe.load_hifi_portrait(adapter)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate_all(pipe, held: Path, seed: int, p: Preset, conditions=CONDITIONS) -> dict:
    """Images ``{condition: (seeds, K, S, S, 3) uint8}`` for every held-out target, and what was asked for."""
    from hifi_portrait.data import PortraitDataset

    ds = PortraitDataset(held, resolution=64, min_refs=4, max_refs=4, seed=seed)
    items = [ds[k] for k in range(len(ds))]
    k_ids = len(items)
    num_tokens = pipe.face_refiner.config.num_tokens
    dim = pipe.face_refiner.config.output_dim
    images = {c: np.zeros((p.gen_seeds, k_ids, 64, 64, 3), np.uint8) for c in conditions}
    shape = pipe.unet.config.in_channels, 64 // pipe.vae_scale_factor, 64 // pipe.vae_scale_factor
    latents = {c: np.zeros((p.gen_seeds, k_ids, *shape), np.float32) for c in conditions}
    for k, item in enumerate(items):
        wrong = items[(k + 1) % k_ids]
        lmap = item["landmark_map"]
        for s in range(p.gen_seeds):
            for c in conditions:
                kw: dict = {"landmark_image": lmap}
                if c == "refs4":
                    kw.update(id_embeds=item["ref_identity"], reference_quality=item["ref_quality"])
                elif c == "refs1":
                    kw.update(id_embeds=item["ref_identity"][:1], reference_quality=item["ref_quality"][:1])
                elif c == "wrong_refs":
                    kw.update(id_embeds=wrong["ref_identity"], reference_quality=wrong["ref_quality"])
                elif c == "no_refs":
                    kw.update(id_tokens=torch.zeros(1, num_tokens, dim))
                elif c == "no_map":
                    kw.update(id_embeds=item["ref_identity"], reference_quality=item["ref_quality"])
                    kw["landmark_image"] = torch.zeros_like(lmap)
                elif c == "uniform_q":
                    kw.update(id_embeds=item["ref_identity"], reference_quality=torch.ones(4))
                lat = pipe(
                    prompt=W.CAPTION,
                    height=64,
                    width=64,
                    num_inference_steps=p.inference_steps,
                    guidance_scale=p.guidance_scale,
                    generator=torch.Generator().manual_seed(seed * 1000 + s),
                    output_type="latent",
                    **kw,
                ).images
                latents[c][s, k] = lat[0].numpy()
                with torch.no_grad():
                    out = pipe.vae.decode(lat / pipe.vae.config.scaling_factor).sample[0]
                out = (out / 2 + 0.5).clamp(0, 1).permute(1, 2, 0).numpy()
                images[c][s, k] = np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8)
    targets = np.stack(
        [((it["target"].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8) for it in items]
    )
    return {
        "images": images,
        "latents": latents,
        "poses": np.stack([it["pose"].numpy() for it in items]),
        "maps": np.stack([(it["landmark_map"].permute(1, 2, 0).numpy() * 255).astype(np.uint8) for it in items]),
        "refs": np.stack([(it["refs"].permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8) for it in items]),
        "targets": targets,
    }


def metrics(ev, gen: dict) -> dict:
    """Per condition: identity top-1 (and, for wrong references, how often the *reference's* identity wins) and
    pose error, each as mean and standard deviation over generation seeds."""
    k_ids = gen["poses"].shape[0]
    labels = np.arange(k_ids)
    out: dict = {}
    for c, imgs in gen["images"].items():
        top1, top1_ref, pose_err, yaw_err = [], [], [], []
        for s in range(imgs.shape[0]):
            pred = identity_scores(ev, imgs[s]).argmax(1)
            top1.append(float((pred == labels).mean()))
            top1_ref.append(float((pred == (labels + 1) % k_ids).mean()))
            err = np.abs(predict_pose(ev, imgs[s]) - gen["poses"])
            pose_err.append(float(err.mean()))
            yaw_err.append(float(err[:, 0].mean()))
        out[c] = {
            "top1": float(np.mean(top1)),
            "top1_std": float(np.std(top1)),
            "top1_per_seed": top1,
            "top1_of_wrong_identity": float(np.mean(top1_ref)),
            "pose_err_deg": float(np.mean(pose_err)),
            "pose_err_std": float(np.std(pose_err)),
            "yaw_err_deg": float(np.mean(yaw_err)),
        }
    # the evaluators on the true target renders: the ceiling of what a perfect generator would score
    pred = identity_scores(ev, gen["targets"]).argmax(1)
    err = np.abs(predict_pose(ev, gen["targets"]) - gen["poses"])
    out["real_targets"] = {"top1": float((pred == labels).mean()), "pose_err_deg": float(err.mean())}
    if "refs4" in out and "refs1" in out:
        diff = np.array(out["refs4"]["top1_per_seed"]) - np.array(out["refs1"]["top1_per_seed"])
        out["n4_minus_n1"] = {"mean": float(diff.mean()), "std": float(diff.std()), "per_seed": diff.tolist()}
    return out


def run(out: str | Path, preset: str = "full", seed: int = 0, threads: int | None = None) -> dict:
    """Run the whole experiment into ``out``; returns the results (also written to ``out/results.json``)."""
    p = PRESETS[preset]
    if threads:
        torch.set_num_threads(threads)
    run_dir = Path(out)
    run_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    log(f"world: {p.train_ids} training and {p.eval_ids} held-out identities")
    train_data, held = make_worlds(run_dir, seed, p)
    timings["world"] = time.perf_counter() - t

    t = time.perf_counter()
    log("evaluators")
    eval_ids = list(range(EVAL_BASE, EVAL_BASE + p.eval_ids))
    ev = train_evaluators(seed, eval_ids, p.evaluator_images, 4, p.evaluator_epochs, torch_seed=seed)
    log(f"evaluators: {ev.report}")
    timings["evaluators"] = time.perf_counter() - t

    t = time.perf_counter()
    log("base pre-training")
    torch.manual_seed(seed)
    images = world_images(seed, list(range(p.train_ids)), p.train_images, 64)
    base_report = pretrain_base(run_dir / "base", images, p.vae_steps, p.unet_steps, p.base_batch, seed, log=log)
    timings["base"] = time.perf_counter() - t

    t = time.perf_counter()
    adapter_dir = train_adapter(run_dir, run_dir / "base", train_data, seed, p.adapter_steps, p.adapter_overrides)
    timings["adapter"] = time.perf_counter() - t
    losses = read_losses(adapter_dir)

    t = time.perf_counter()
    log("generation")
    pipe = load_pipeline(run_dir / "base", adapter_dir / "hifi_portrait_adapter.safetensors")
    gen = generate_all(pipe, held, seed, p)
    timings["generation"] = time.perf_counter() - t
    results = {
        "preset": preset,
        "settings": asdict(p),
        "seed": seed,
        "metrics": metrics(ev, gen),
        "evaluators": ev.report,
        "base": {
            "vae_final_loss": float(np.mean(base_report.vae_losses[-20:])),
            "unet_final_loss": float(np.mean(base_report.unet_losses[-20:])),
            "scaling_factor": base_report.scaling_factor,
        },
        "adapter_losses": losses,
        "base_losses": {"vae": base_report.vae_losses, "unet": base_report.unet_losses},
        "seconds": timings,
        "chance": 1.0 / p.eval_ids,
    }
    np.savez_compressed(
        run_dir / "generated.npz",
        **{f"img_{c}": v for c, v in gen["images"].items()},
        maps=gen["maps"],
        refs=gen["refs"],
        targets=gen["targets"],
        poses=gen["poses"],
    )
    (run_dir / "results.json").write_text(json.dumps(results, indent=1))
    results["_gen"] = gen
    return results
