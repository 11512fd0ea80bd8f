"""Identity backends: the PyTorch port of dlib's ResNet equals dlib; the insightface ONNX backend loads user files."""

from __future__ import annotations

import numpy as np
import pytest

from hifi_portrait.errors import ModelFilesMissingError
from hifi_portrait.face import DlibEmbedder, FaceAnalyzer, FaceSet, InsightFaceEmbedder
from hifi_portrait.face.dlib_resnet import read_dlib_resnet
from hifi_portrait.face.model_files import FACE_LANDMARKER_ENV, dlib_model, face_landmarker_task


@pytest.fixture(scope="module")
def dlib_pair():
    return DlibEmbedder(backend="torch"), DlibEmbedder(backend="dlib")


@pytest.mark.parametrize("name", ["obama.jpg", "biden.jpg", "tom_hanks.png"])
def test_torch_port_equals_dlib(analyzer, photos, dlib_pair, name):
    ours, theirs = dlib_pair
    det = analyzer.detect(photos[name])[0]
    a, b = ours.embed(photos[name], det), theirs.embed(photos[name], det)
    assert np.abs(a - b).max() < 1e-4


def test_dlib_reader_refuses_other_files(tmp_path):
    weights = read_dlib_resnet(dlib_model("dlib_face_recognition_resnet_model_v1.dat"))
    assert len(weights["convs"]) == 29 and weights["fc"].shape == (256, 128)
    assert np.allclose(weights["mean"], [122.782, 117.001, 104.298], atol=1e-3)
    bogus = tmp_path / "bogus.dat"
    bogus.write_bytes(b"\x00" * 100)
    with pytest.raises(ModelFilesMissingError, match="not dlib's face recognition"):
        read_dlib_resnet(bogus)


def test_face_landmarker_file_lookup(tmp_path, monkeypatch):
    assert face_landmarker_task().name == "face_landmarker.task"
    with pytest.raises(ModelFilesMissingError, match="does not exist"):
        face_landmarker_task(tmp_path / "missing.task")
    monkeypatch.setenv(FACE_LANDMARKER_ENV, str(tmp_path / "nothing.task"))
    with pytest.raises(ModelFilesMissingError, match=FACE_LANDMARKER_ENV):
        face_landmarker_task()


# --------------------------------------------------------------------------- insightface backend
def test_insightface_missing_folder_names_what_to_get(tmp_path):
    with pytest.raises(ModelFilesMissingError, match=r"antelopev2.*does not exist|does not exist.*antelopev2"):
        FaceAnalyzer(insightface_dir=tmp_path / "antelopev2")


def test_insightface_folder_without_recognition_model(tmp_path):
    folder = tmp_path / "antelopev2"
    folder.mkdir()
    (folder / "scrfd_10g_bnkps.onnx").write_bytes(b"detector only")
    with pytest.raises(ModelFilesMissingError) as info:
        InsightFaceEmbedder(folder)
    message = str(info.value)
    assert "glintr100.onnx" in message and "w600k_r50.onnx" in message and "scrfd_10g_bnkps.onnx" in message


def _pb_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _pb(field: int, value) -> bytes:
    """One protobuf field: ints as varints, bytes/str as length-delimited."""
    if isinstance(value, int):
        return _pb_varint(field << 3) + _pb_varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _pb_varint(field << 3 | 2) + _pb_varint(len(data)) + data


def _tiny_arcface_onnx(seed: int = 0) -> bytes:
    """A random ONNX 'recognition model' with ArcFace's interface: (N, 3, 112, 112) -> (N, 512).

    AveragePool 8x8 -> Flatten -> MatMul; written with a few lines of protobuf (the onnx package is not needed).
    """
    weight = np.random.default_rng(seed).standard_normal((3 * 14 * 14, 512)).astype("<f4")

    def value_info(name: str, dims: list) -> bytes:
        shape = b"".join(_pb(1, _pb(2, d) if isinstance(d, str) else _pb(1, d)) for d in dims)
        return _pb(1, name) + _pb(2, _pb(1, _pb(1, 1) + _pb(2, shape)))

    def ints_attr(name: str, values: list[int]) -> bytes:
        return _pb(1, name) + _pb(20, 7) + b"".join(_pb(8, v) for v in values)

    pool = (
        _pb(1, "data")
        + _pb(2, "pooled")
        + _pb(4, "AveragePool")
        + _pb(5, ints_attr("kernel_shape", [8, 8]))
        + _pb(5, ints_attr("strides", [8, 8]))
    )
    flat = _pb(1, "pooled") + _pb(2, "flat") + _pb(4, "Flatten")
    matmul = _pb(1, "flat") + _pb(1, "W") + _pb(2, "fc1") + _pb(4, "MatMul")
    init = _pb(1, weight.shape[0]) + _pb(1, weight.shape[1]) + _pb(2, 1) + _pb(8, "W") + _pb(9, weight.tobytes())
    graph = (
        _pb(1, pool)
        + _pb(1, flat)
        + _pb(1, matmul)
        + _pb(2, "tiny_arcface")
        + _pb(5, init)
        + _pb(11, value_info("data", ["N", 3, 112, 112]))
        + _pb(12, value_info("fc1", ["N", 512]))
    )
    opset = _pb(1, "") + _pb(2, 13)
    return _pb(1, 8) + _pb(8, opset) + _pb(7, graph)


def test_insightface_backend_runs_a_user_onnx_model(tmp_path, photos):
    folder = tmp_path / "antelopev2"
    folder.mkdir()
    (folder / "glintr100.onnx").write_bytes(_tiny_arcface_onnx())
    analyzer = FaceAnalyzer(insightface_dir=folder)
    fa = analyzer.analyze(photos["obama.jpg"], source="obama.jpg")
    assert fa.identity_model == "insightface-glintr100"
    assert fa.identity.shape == (512,) and abs(np.linalg.norm(fa.identity) - 1) < 1e-5
    # the embedding is computed from the ArcFace crop with ArcFace's normalisation ((x - 127.5) / 127.5)
    embedder = analyzer.embedder
    assert np.allclose(embedder.embed_crop(fa.arcface_crop), fa.identity, atol=1e-5)
    again = analyzer.analyze(photos["obama2.jpg"], source="obama2.jpg")
    fset = FaceSet.from_analyses([fa, again])
    assert fset.threshold == pytest.approx(0.35) and fset.identity_model == "insightface-glintr100"
