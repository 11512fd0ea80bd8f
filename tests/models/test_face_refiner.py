"""FaceRefiner: shapes, permutation invariance, padding-mask correctness, quality weighting, N=1..8, round-trip."""

from __future__ import annotations

import pytest
import torch

from hifi_portrait.errors import NoUsableReferencesError
from hifi_portrait.models import FaceRefiner

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def refiner() -> FaceRefiner:
    torch.manual_seed(0)
    model = FaceRefiner(
        id_embed_dim=16,
        patch_dim=12,
        num_patches=5,
        hidden_dim=32,
        num_tokens=6,
        output_dim=24,
        num_layers=2,
        num_heads=4,
        id_tokens_per_ref=2,
        ff_mult=2,
    )
    return model.eval()


def _inputs(b: int, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, 16, generator=g), torch.randn(b, n, 5, 12, generator=g), torch.rand(b, n, generator=g)


@torch.no_grad()
def test_shapes_for_n_1_to_8(refiner):
    for n in range(1, 9):
        ids, patches, q = _inputs(2, n, seed=n)
        out = refiner(ids, patches, q)
        assert out.shape == (2, 6, 24)
        assert torch.isfinite(out).all()
    # identity vectors only (no patch tokens) also works
    assert refiner(ids).shape == (2, 6, 24)


@torch.no_grad()
def test_permutation_invariance(refiner):
    ids, patches, q = _inputs(2, 5)
    out = refiner(ids, patches, q)
    perm = torch.tensor([3, 0, 4, 1, 2])
    out_perm = refiner(ids[:, perm], patches[:, perm], q[:, perm])
    torch.testing.assert_close(out_perm, out, atol=1e-5, rtol=1e-5)
    # and the output does depend on the references (not a constant)
    other = refiner(*_inputs(2, 5, seed=1))
    assert (other - out).abs().max() > 1e-3


@torch.no_grad()
def test_padding_has_zero_influence(refiner):
    ids, patches, q = _inputs(1, 3)
    ref = refiner(ids, patches, q)
    # pad with 4 garbage references (huge values, even inf) masked out, at mixed positions
    g = torch.Generator().manual_seed(5)
    pad_ids = torch.randn(1, 4, 16, generator=g) * 1e4
    pad_ids[0, 0, 0] = float("inf")
    pad_patches = torch.randn(1, 4, 5, 12, generator=g) * 1e4
    all_ids = torch.cat([pad_ids[:, :2], ids, pad_ids[:, 2:]], dim=1)
    all_patches = torch.cat([pad_patches[:, :2], patches, pad_patches[:, 2:]], dim=1)
    all_q = torch.cat([torch.ones(1, 2), q, torch.ones(1, 2)], dim=1)
    mask = torch.tensor([[False, False, True, True, True, False, False]])
    out = refiner(all_ids, all_patches, all_q, ref_mask=mask)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_variable_n_in_one_batch_matches_separate_calls(refiner):
    ids, patches, q = _inputs(2, 4)
    mask = torch.tensor([[True, True, True, True], [True, False, True, False]])
    out = refiner(ids, patches, q, ref_mask=mask)
    first = refiner(ids[:1], patches[:1], q[:1])
    second = refiner(ids[1:, [0, 2]], patches[1:, [0, 2]], q[1:, [0, 2]])
    torch.testing.assert_close(out[:1], first, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1:], second, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_quality_weights_matter_and_duplicates_are_consistent(refiner):
    ids, patches, _ = _inputs(1, 3)
    a = refiner(ids, patches, torch.tensor([[1.0, 1.0, 1.0]]))
    b = refiner(ids, patches, torch.tensor([[1.0, 0.01, 0.01]]))
    assert (a - b).abs().max() > 1e-4
    # a reference given twice at weight 0.5 each equals it once at weight 1 (weights act as probability mass)
    one = refiner(ids[:, :1], patches[:, :1], torch.tensor([[1.0]]))
    two = refiner(ids[:, [0, 0]], patches[:, [0, 0]], torch.tensor([[0.5, 0.5]]))
    torch.testing.assert_close(one, two, atol=1e-5, rtol=1e-5)


def test_all_padding_raises(refiner):
    ids, patches, q = _inputs(2, 2)
    with pytest.raises(NoUsableReferencesError):
        refiner(ids, patches, q, ref_mask=torch.tensor([[True, False], [False, False]]))


@torch.no_grad()
def test_save_load_round_trip(refiner, tmp_path):
    refiner.save_pretrained(tmp_path / "refiner")
    loaded = FaceRefiner.from_pretrained(tmp_path / "refiner").eval()
    ids, patches, q = _inputs(2, 3)
    assert loaded.config.num_tokens == 6
    assert torch.equal(loaded(ids, patches, q), refiner(ids, patches, q))
