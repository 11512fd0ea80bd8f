"""The fast variant of the learnability benchmark (issue 16) as a CI smoke test: world -> evaluators -> base
pre-training -> `hifi-portrait train` (subprocess) -> generation; it fails when the references, the ID tokens or the
landmark map no longer change the generated image. About 1-2 minutes on 2 shared CPU cores.

Find it with ``pytest -m learnability``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.learnability import experiment, report  # noqa: E402


def test_smoke_check_flags_a_condition_that_does_not_reach_the_output():
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, (1, 3, 4, 16, 16))
    latents = {c: base + rng.normal(0, 0.01, base.shape) for c in experiment.CONDITIONS}  # each differs a little
    latents["refs4"] = base
    assert report.smoke_check({"_gen": {"latents": latents}}) == []
    latents["wrong_refs"] = base.copy()  # wrong references give the same result: identity is not wired
    problems = report.smoke_check({"_gen": {"latents": latents}})
    assert len(problems) == 1 and "references" in problems[0]
    latents["no_map"] = base + 1e-6  # float noise is not an effect
    assert len(report.smoke_check({"_gen": {"latents": latents}})) == 2


@pytest.mark.learnability
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_learnability_run_conditioning_reaches_the_output(tmp_path):
    results = experiment.run(tmp_path / "run", "quick", seed=0, threads=1)
    assert (tmp_path / "run" / "adapter" / "hifi_portrait_adapter.safetensors").is_file()
    assert len(results["adapter_losses"]) == experiment.PRESETS["quick"].adapter_steps  # read back from TensorBoard
    assert all(np.isfinite(results["adapter_losses"]))
    effects = report.effects(results)
    assert report.smoke_check(results) == [], effects
    # the evaluators are trained and run on the generated images
    m = results["metrics"]
    assert set(experiment.CONDITIONS) <= set(m) and 0 <= m["refs4"]["top1"] <= 1
    assert results["evaluators"]["identity_top1"] > results["evaluators"]["identity_chance"]
