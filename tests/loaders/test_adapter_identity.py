"""The adapter file records the identity model it was trained on; references of another identity model are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from hifi_portrait.errors import WeightsMismatchError
from hifi_portrait.loaders import write_adapter_file
from hifi_portrait.models import install_id_attention
from hifi_portrait.pipelines import StableDiffusionXLHiFiPortraitPipeline
from hifi_portrait.utils.testing import DUMMY_NUM_PATCHES, get_dummy_adapter, get_dummy_components

torch.set_num_threads(1)
OBAMA = Path(__file__).resolve().parents[1] / "data" / "obama.jpg"


def _pipe() -> StableDiffusionXLHiFiPortraitPipeline:
    return StableDiffusionXLHiFiPortraitPipeline(
        **get_dummy_components(with_image_encoder=False), add_watermarker=False
    )


def _adapter(tmp_path, identity_model: str | None) -> Path:
    pipe = _pipe()
    adapter = get_dummy_adapter(pipe.unet)
    procs = install_id_attention(pipe.unet, num_tokens=adapter["face_refiner"].config.num_tokens)
    return write_adapter_file(
        tmp_path / f"{identity_model}.safetensors",
        face_refiner=adapter["face_refiner"],
        hifi_net=adapter["hifi_net"],
        ip_attn=procs,
        identity_model=identity_model,
    )


def test_adapter_records_identity_model_and_dim(tmp_path):
    path = _adapter(tmp_path, "insightface-glintr100")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    pipe = _pipe()
    assert meta["identity_model"] == "insightface-glintr100"
    pipe.load_hifi_portrait(path)
    assert meta["identity_dim"] == str(pipe.face_refiner.config.id_embed_dim)
    assert pipe.adapter_identity == {"identity_model": "insightface-glintr100", "identity_dim": meta["identity_dim"]}


def test_references_of_another_identity_model_are_a_typed_error(tmp_path):
    from hifi_portrait.face import FaceAnalyzer

    analyzer = FaceAnalyzer(check_orientation=False)
    path = _adapter(tmp_path, "insightface-glintr100")
    # loading with an analyzer of another identity model already attached
    pipe = _pipe()
    pipe.face_analyzer = analyzer
    with pytest.raises(
        WeightsMismatchError, match=r"trained on insightface-glintr100 .*analysed with dlib-resnet-128"
    ):
        pipe.load_hifi_portrait(path)
    # references analysed (for real) with the dlib analyzer, given to a pipeline with the ArcFace adapter
    pipe = _pipe()
    pipe.load_hifi_portrait(path)
    face = analyzer.analyze(str(OBAMA))
    tokens = torch.zeros(1, DUMMY_NUM_PATCHES, 32)
    assert face.identity_model == "dlib-resnet-128"
    with pytest.raises(WeightsMismatchError, match="insightface_dir"):
        pipe.encode_id_tokens(faces=[face])
    # an adapter of the same identity model (or one that does not say) takes them
    for model in ("dlib-resnet-128", None):
        pipe = _pipe()
        pipe.load_hifi_portrait(_adapter(tmp_path, model))
        out = pipe.encode_id_tokens(faces=[face], patch_tokens=tokens)
        assert out.shape[:2] == (1, pipe.face_refiner.config.num_tokens) and torch.isfinite(out).all()
