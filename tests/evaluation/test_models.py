"""Plumbing of the model-dependent metrics with tiny RANDOM models (their numbers are meaningless; only the
loading, shapes, normalization and wiring into the runner are checked)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import yaml

from hifi_portrait.errors import ModelFilesMissingError, WeightsMismatchError
from hifi_portrait.evaluation import (
    ClipScorer,
    Evaluator,
    FIDInceptionV3,
    inception_features,
    load_fid_inception,
    load_manifest,
)


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from hifi_portrait.utils.testing import make_tiny_clip_tokenizer

    torch.manual_seed(0)
    tokenizer = make_tiny_clip_tokenizer()
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
    )
    vision = dict(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4
    )
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    path = tmp_path_factory.mktemp("tiny_clip")
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def test_clip_scorer_plumbing(tiny_clip_dir, data_dir):
    from hifi_portrait.face import load_image

    scorer = ClipScorer(tiny_clip_dir)
    images = [load_image(data_dir / "obama.jpg"), load_image(data_dir / "biden.jpg")]
    emb = scorer.image_embeddings(images)
    assert emb.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    txt = scorer.text_embeddings(["a photo of a man", "an astronaut"])
    assert txt.shape == (2, 16)
    scores = scorer.clip_t(images, ["a photo of a man", "an astronaut"])
    np.testing.assert_allclose(scores, np.sum(emb * txt, axis=1), atol=1e-6)
    # the same image twice embeds identically (deterministic, eval mode)
    np.testing.assert_allclose(scorer.image_embeddings([images[0], images[0]])[1], emb[0], atol=1e-5)
    with pytest.raises(ValueError, match="prompts"):
        scorer.clip_t(images, ["only one"])


def test_clip_scorer_missing_files(tmp_path, tiny_clip_dir):
    with pytest.raises(ModelFilesMissingError, match="config.json"):
        ClipScorer(tmp_path / "nothing")
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(tiny_clip_dir / "config.json", partial / "config.json")
    with pytest.raises(ModelFilesMissingError, match="safetensors"):
        ClipScorer(partial)


@pytest.fixture(scope="module")
def random_inception():
    torch.manual_seed(0)
    return FIDInceptionV3().eval()


def test_fid_inception_load_and_features(tmp_path, random_inception):
    from safetensors.torch import save_file

    model = random_inception
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(state, tmp_path / "inception.safetensors")
    loaded = load_fid_inception(tmp_path / "inception.safetensors")
    assert not loaded.training
    rng = np.random.default_rng(0)
    feats = inception_features(loaded, [rng.integers(0, 255, (80, 64, 3), dtype=np.uint8)])
    assert feats.shape == (1, 2048) and np.isfinite(feats).all()
    assert (feats >= 0).all()  # pool3 features are averages of ReLU outputs
    # a .pth state dict (read with weights_only=True) loads the same
    torch.save(model.state_dict(), tmp_path / "inception.pth")
    assert load_fid_inception(tmp_path / "inception.pth") is not None
    with pytest.raises(ModelFilesMissingError, match="pytorch-fid"):
        load_fid_inception(tmp_path / "missing.pth")
    save_file({"fc.weight": torch.zeros(3, 3)}, tmp_path / "wrong.safetensors")
    with pytest.raises(WeightsMismatchError, match="not the FID Inception"):
        load_fid_inception(tmp_path / "wrong.safetensors")


class MeanColour(torch.nn.Module):
    """A 3-d stand-in feature extractor (mean RGB) for checking the runner's FID/KID wiring cheaply; the real
    Inception network is tested above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def test_runner_with_clip_and_fid_wiring(tmp_path, data_dir, evaluator, tiny_clip_dir):
    """CLIP-T, diversity, FID and KID appear in the results when the models are given (random CLIP: its values are
    meaningless; FID/KID equal the functions applied to the extractor's features of the right two sets)."""
    from hifi_portrait.evaluation import fid_from_features, kid_from_features
    from hifi_portrait.face import load_image

    gen, real = tmp_path / "gen", tmp_path / "real"
    gen.mkdir()
    real.mkdir()
    for i in range(2):  # two identical generated images
        shutil.copy(data_dir / "obama.jpg", gen / f"a_{i}.jpg")
    for name in ["biden.jpg", "astronaut.jpg", "obama3.jpg"]:
        shutil.copy(data_dir / name, real / name)
    (tmp_path / "m.yaml").write_text(
        yaml.safe_dump(
            {"entries": [{"id": "a", "references": [str(data_dir / "obama3.jpg")], "prompt": "a portrait photo"}]}
        )
    )
    ev = Evaluator(
        analyzer=evaluator.analyzer,
        clip=ClipScorer(tiny_clip_dir),
        inception=MeanColour(),
        fid_reference_dir=real,
        kid_subsets=3,
        progress=False,
    )
    res = ev.evaluate(load_manifest(tmp_path / "m.yaml"), gen, method="tiny")
    assert all(-1.0 <= r["clip_t"] <= 1.0 for r in res.rows)
    # the two images have the same content: equal CLIP-T, and zero diversity (a known value, even with random weights)
    assert res.rows[0]["clip_t"] == pytest.approx(res.rows[1]["clip_t"], abs=1e-6)
    assert res.entries[0]["diversity_clip"] == pytest.approx(0.0, abs=1e-6)
    fg = inception_features(MeanColour(), [load_image(gen / f"a_{i}.jpg") for i in range(2)])
    fr = inception_features(MeanColour(), [load_image(real / n) for n in sorted(p.name for p in real.iterdir())])
    assert res.summary["fid"] == pytest.approx(fid_from_features(fg, fr), rel=1e-9)
    assert res.summary["kid_mean"] == pytest.approx(kid_from_features(fg, fr, 3, 1000)[0], rel=1e-9)
    assert res.summary["fid_n_generated"] == 2 and res.summary["fid_n_real"] == 3
    assert not any("skipped" in n and ("CLIP" in n or "FID" in n) for n in res.notices)
