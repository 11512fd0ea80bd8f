"""checkpoint-{step} listing, 'latest', rotation; the epoch-seeded sampler; the step RNG's saved state."""

from __future__ import annotations

import pytest
import torch

from hifi_portrait.errors import ConfigError
from hifi_portrait.training.checkpointing import TrainingRNG, list_checkpoints, resolve_resume, rotate_checkpoints
from hifi_portrait.training.sampler import EpochSeededSampler


def test_list_resolve_rotate(tmp_path):
    assert resolve_resume(tmp_path, "latest") is None
    for step in (10, 2, 100):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-final").mkdir()  # not a checkpoint name: ignored
    (tmp_path / "logs").mkdir()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-10", "checkpoint-100"]
    assert resolve_resume(tmp_path, "latest").name == "checkpoint-100"
    assert resolve_resume(tmp_path, "checkpoint-10").name == "checkpoint-10"
    assert resolve_resume(tmp_path, None) is None
    with pytest.raises(ConfigError, match="checkpoint-7.*checkpoint-2, checkpoint-10"):
        resolve_resume(tmp_path, "checkpoint-7")
    removed = rotate_checkpoints(tmp_path, total_limit=2)  # room for one more: keep only the newest
    assert [p.name for p in removed] == ["checkpoint-2", "checkpoint-10"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-100"]
    assert rotate_checkpoints(tmp_path, None) == []


def test_sampler_depends_only_on_seed_and_epoch():
    a, b = EpochSeededSampler(50, seed=3), EpochSeededSampler(50, seed=3)
    a.set_epoch(4)
    b.set_epoch(4)
    first = list(a)
    assert first == list(b) and sorted(first) == list(range(50))
    b.set_epoch(5)
    assert list(b) != first
    assert list(EpochSeededSampler(5, seed=0, shuffle=False)) == [0, 1, 2, 3, 4]


def test_training_rng_state_roundtrip():
    rng = TrainingRNG(7)
    rng.randn((3,))
    state = {k: v.clone() for k, v in rng.state_dict().items()}
    expected = rng.randn((4, 2))
    other = TrainingRNG(99)
    other.load_state_dict(state)
    assert torch.equal(other.randn((4, 2)), expected)
    # with 2 processes each one keeps its half of the global batch's numbers: together, the 1-process draw
    draws = [("randn", (3, 2)), ("rand", (3, 4)), ("randint", (3,))]
    for name, shape in draws:
        args = (1000, shape) if name == "randint" else (shape,)
        global_args = (1000, (6, *shape[1:])) if name == "randint" else ((6, *shape[1:]),)
        halves = [getattr(TrainingRNG(7, process_index=i, num_processes=2), name)(*args) for i in range(2)]
        assert not torch.equal(halves[0], halves[1])
        assert torch.equal(torch.cat(halves), getattr(TrainingRNG(7), name)(*global_args))
