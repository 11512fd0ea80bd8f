"""Results of the learnability benchmark: console summary, the CI smoke check, and the Markdown report + figures."""

from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
FIG_DIR = RESULTS / "learnability"

#: smallest relative change of the final latents (mean |difference| / mean |latent|) between two conditions that
#: counts as "the condition reached the output"; a broken wire gives exactly 0 (generation is deterministic for a
#: seed, and every condition starts from the same noise). The quick run trains 12 adapter steps, so the landmark
#: path (two zero-initialised layers in series: the map embedding's output and the zero convolutions) has only
#: begun to move; its effect is small but far from 0
MIN_EFFECT = 1e-5  # measured in --quick (seed 0): no_map 4.5e-4, wrong_refs 1.3e-3, refs1 2.5e-3, no_refs 7.6e-2

LABELS = {
    "refs4": "4 references + map",
    "refs1": "1 reference + map",
    "wrong_refs": "4 references of another identity + map",
    "no_refs": "no references (zero ID tokens) + map",
    "no_map": "4 references, no landmark map",
    "uniform_q": "4 references, uniform fusion weights + map",
}


def effects(results: dict) -> dict[str, float]:
    """Relative change of the generated latents of each ablation from ``refs4`` (same seeds, same initial noise)."""
    lat = results["_gen"]["latents"]
    ref = lat["refs4"].astype(np.float64)
    scale = np.abs(ref).mean()
    return {c: float(np.abs(v.astype(np.float64) - ref).mean() / scale) for c, v in lat.items() if c != "refs4"}


def pixel_effects(results: dict) -> dict[str, float]:
    """Mean absolute pixel difference (0-255) of each ablation's images from ``refs4``'s."""
    imgs = results["_gen"]["images"]
    ref = imgs["refs4"].astype(np.float64)
    return {c: float(np.abs(v.astype(np.float64) - ref).mean()) for c, v in imgs.items() if c != "refs4"}


def smoke_check(results: dict) -> list[str]:
    """Problems that mean conditioning no longer reaches the output (empty list = fine)."""
    eff = effects(results)
    problems = []
    for cond, what in (("wrong_refs", "the references"), ("no_refs", "the ID tokens"), ("no_map", "the landmark map")):
        if eff[cond] < MIN_EFFECT:
            problems.append(f"{what} do not change the output: |refs4 - {cond}| = {eff[cond]:.4f} < {MIN_EFFECT}")
    return problems


def summary(results: dict) -> str:
    m = results["metrics"]
    lines = [f"learnability ({results['preset']}), chance top-1 {results['chance']:.3f}"]
    for c in LABELS:
        if c in m:
            r = m[c]
            lines.append(
                f"  {c:11s} top1 {r['top1']:.3f} +- {r['top1_std']:.3f}  pose err {r['pose_err_deg']:.2f} deg "
                f"(yaw {r['yaw_err_deg']:.2f})"
            )
    rt = m["real_targets"]
    lines.append(f"  real targets: top1 {rt['top1']:.3f}, pose err {rt['pose_err_deg']:.2f} deg")
    eff = ", ".join(f"{k} {v:.4f}" for k, v in effects(results).items())
    lines.append(f"  effects vs refs4 (relative latent change): {eff}")
    eff = ", ".join(f"{k} {v:.2f}" for k, v in pixel_effects(results).items())
    lines.append(f"  effects vs refs4 (mean |pixel diff|, 0-255): {eff}")
    lines.append("  seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in results["seconds"].items()))
    return "\n".join(lines)


def acceptance(results: dict) -> list[tuple[str, bool, str]]:
    """The issue's acceptance criteria, each with pass/fail and the numbers."""
    m, chance = results["metrics"], results["chance"]
    r4, wrong, nomap = m["refs4"], m["wrong_refs"], m["no_map"]
    d = m["n4_minus_n1"]
    return [
        ("identity top-1 >= 5x chance", r4["top1"] >= 5 * chance, f"{r4['top1']:.3f} vs 5 x {chance:.3f}"),
        (
            "identity top-1 >= 2x wrong-reference ablation",
            r4["top1"] >= 2 * wrong["top1"],
            f"{r4['top1']:.3f} vs 2 x {wrong['top1']:.3f}",
        ),
        (
            "pose error with map <= half of no-map",
            r4["pose_err_deg"] <= 0.5 * nomap["pose_err_deg"],
            f"{r4['pose_err_deg']:.2f} vs 0.5 x {nomap['pose_err_deg']:.2f} deg",
        ),
        (
            "N=4 not worse than N=1",
            d["mean"] >= 0,
            f"top-1 difference {d['mean']:+.3f} +- {d['std']:.3f} over {len(d['per_seed'])} seeds",
        ),
    ]


def _grid(gen: dict, rows: int = 8) -> np.ndarray:
    """Rows: references (4) | target map | generated refs4, refs1, wrong_refs, no_refs, no_map | real target."""
    imgs = gen["images"]
    out = []
    for k in range(min(rows, gen["maps"].shape[0])):
        cells = [*gen["refs"][k], gen["maps"][k]]
        cells += [imgs[c][0, k] for c in ("refs4", "refs1", "wrong_refs", "no_refs", "no_map")]
        cells.append(gen["targets"][k])
        cells = [np.pad(c[:, :, :3], ((1, 1), (1, 1), (0, 0)), constant_values=255) for c in cells]
        out.append(np.concatenate(cells, 1))
    return np.concatenate(out, 0)


def write(results: dict, command: str) -> Path:
    """Write ``benchmarks/results/learnability.md`` (+ ``learnability/`` figures and ``learnability.json``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    FIG_DIR.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_grid(results["_gen"])).resize(
        (11 * 66, min(8, results["_gen"]["maps"].shape[0]) * 66), Image.NEAREST
    ).save(FIG_DIR / "samples.png")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    for ax, (name, vals) in zip(
        axes,
        [
            ("VAE (pre-training)", results["base_losses"]["vae"]),
            ("UNet (pre-training)", results["base_losses"]["unet"]),
            ("adapter (hifi-portrait train)", results["adapter_losses"]),
        ],
        strict=True,
    ):
        v = np.asarray(vals)
        ax.plot(v, alpha=0.3)
        if len(v) >= 20:
            ax.plot(np.convolve(v, np.ones(20) / 20, mode="valid"))
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(FIG_DIR / "losses.png", dpi=80)
    plt.close(fig)

    m, chance = results["metrics"], results["chance"]
    rows = [
        f"| {LABELS[c]} | {m[c]['top1']:.3f} ± {m[c]['top1_std']:.3f} | {m[c]['pose_err_deg']:.2f} ± "
        f"{m[c]['pose_err_std']:.2f} | {m[c]['yaw_err_deg']:.2f} |"
        for c in LABELS
        if c in m
    ]
    ev, rt = results["evaluators"], m["real_targets"]
    acc = "\n".join(f"| {name} | {'yes' if ok else '**no**'} | {nums} |" for name, ok, nums in acceptance(results))
    s = results["settings"]
    text = f"""# Learnability benchmark (issue 16)

Can our adapter, trained with our unchanged `hifi-portrait train`, learn identity from references and pose from
the landmark map? Measured in a procedurally generated identity world (benchmarks/learnability/, see its module
docstrings) on held-out identities (zero-shot).

Command: `{command}` (seed {results["seed"]}), {datetime.date.today()}, {platform.processor() or platform.machine()},
CPU only, torch threads 1; wall time {results["seconds"].get("total", 0):.0f} s
({", ".join(f"{k} {v:.0f} s" for k, v in results["seconds"].items() if k != "total")}).

Setup: {s["train_ids"]} training identities x {s["train_images"]} images (2 targets each), {s["eval_ids"]} held-out
identities (4 references + 1 target each), 64x64. Base UNet + VAE **pre-trained first** on the training world
without conditioning ({s["vae_steps"]} VAE + {s["unet_steps"]} UNet steps, batch {s["base_batch"]}), because
`hifi-portrait train` keeps them frozen; then {s["adapter_steps"]} adapter steps (config
`benchmarks/learnability/config.yaml`). Generation: {s["inference_steps"]} steps, guidance {s["guidance_scale"]},
{s["gen_seeds"]} seed(s) per target; the same initial noise for every condition.

## Results on held-out identities (chance top-1 = {chance:.3f})

| condition | identity top-1 | pose error (deg, mean of yaw/pitch/roll) | yaw error (deg) |
|---|---|---|---|
{chr(10).join(rows)}
| the real target renders (evaluator ceiling) | {rt["top1"]:.3f} | {rt["pose_err_deg"]:.2f} | |

N=4 minus N=1 top-1: {m["n4_minus_n1"]["mean"]:+.3f} ± {m["n4_minus_n1"]["std"]:.3f} (per seed:
{", ".join(f"{x:+.3f}" for x in m["n4_minus_n1"]["per_seed"])}).

## Acceptance criteria of the issue

| criterion | met | numbers |
|---|---|---|
{acc}

## Evaluators (trained on other renders of the held-out identities)

Identity classifier top-1 on unseen renders: {ev["identity_top1"]:.3f} over {ev["identities"]} identities
(chance {ev["identity_chance"]:.3f}); pose regressor MAE: yaw {ev["pose_mae_deg"]["yaw"]:.1f}, pitch
{ev["pose_mae_deg"]["pitch"]:.1f}, roll {ev["pose_mae_deg"]["roll"]:.1f} degrees (spread of the poses: yaw
{ev["pose_std_deg"]["yaw"]:.1f}, pitch {ev["pose_std_deg"]["pitch"]:.1f}, roll {ev["pose_std_deg"]["roll"]:.1f}).

## Figures

Samples (rows: held-out identities; columns: 4 references | target landmark map | generated with 4 refs, 1 ref,
wrong refs, no refs, no map | the real target render): ![samples](learnability/samples.png)

Loss curves: ![losses](learnability/losses.png)

Raw numbers: `benchmarks/results/learnability.json`.
"""
    (RESULTS / "learnability.md").write_text(text)
    clean = {k: v for k, v in results.items() if not k.startswith("_")}
    (RESULTS / "learnability.json").write_text(json.dumps(clean, indent=1))
    return RESULTS / "learnability.md"
