"""FaceSet: similarity matrix, outliers, fused identity; JSON + npz round trips of FaceAnalysis and FaceSet."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hifi_portrait.errors import ConfigError, NoUsableReferencesError
from hifi_portrait.face import FaceAnalysis, FaceSet

OBAMA = ["obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg"]


def _assert_same_analysis(a: FaceAnalysis, b: FaceAnalysis) -> None:
    for f in dataclasses.fields(FaceAnalysis):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), f.name
        else:
            assert x == y, f.name


def test_same_person_set_has_no_outlier(analyses):
    fset = FaceSet.from_analyses([analyses[n] for n in OBAMA])
    assert fset.outliers == []
    assert fset.similarity.shape == (4, 4)
    assert np.allclose(np.diag(fset.similarity), 1, atol=1e-5)
    assert np.allclose(fset.similarity, fset.similarity.T)
    assert abs(np.linalg.norm(fset.fused_identity) - 1) < 1e-5
    # the fused vector is closer to every reference than the references are to each other on average
    to_fused = [float(a.identity @ fset.fused_identity) for a in fset.analyses]
    off_diag = fset.similarity[~np.eye(4, dtype=bool)]
    assert min(to_fused) > off_diag.mean()


@pytest.mark.parametrize("intruder", ["biden.jpg", "astronaut.jpg", "tom_hanks.png"])
def test_other_person_is_flagged_and_dropped(analyses, intruder):
    refs = [analyses[n] for n in OBAMA[:3]] + [analyses[intruder]]
    fset = FaceSet.from_analyses(refs)
    assert fset.outliers == [3]
    assert fset.summary()["outlier_sources"] == [intruder]
    clean = fset.without_outliers()
    assert len(clean) == 3 and clean.outliers == []
    # the fused identity leaves the outlier out
    assert np.allclose(fset.fused_identity, clean.fused_identity, atol=1e-6)


def test_fused_identity_is_quality_weighted(analyses):
    refs = [analyses[n] for n in OBAMA[:3]]
    fset = FaceSet.from_analyses(refs)
    w = np.array([a.quality.total for a in refs])
    expected = (w[:, None] * np.stack([a.identity for a in refs])).sum(0)
    assert np.allclose(fset.fused_identity, expected / np.linalg.norm(expected), atol=1e-6)
    assert not np.allclose(w, w[0])  # the weights differ, so weighting matters


def test_two_different_people_cannot_say_which(analyses, caplog):
    with caplog.at_level("WARNING"):
        fset = FaceSet.from_analyses([analyses["obama.jpg"], analyses["biden.jpg"]])
    assert fset.outliers == [] and "probably different people" in caplog.text


def test_empty_and_mixed_model_sets_are_refused(analyses):
    with pytest.raises(NoUsableReferencesError):
        FaceSet.from_analyses([])
    other = dataclasses.replace(analyses["obama2.jpg"], identity_model="insightface-glintr100")
    with pytest.raises(ConfigError, match="different identity models"):
        FaceSet.from_analyses([analyses["obama.jpg"], other])


def test_face_analysis_round_trip(analyses, tmp_path):
    fa = analyses["obama2.jpg"]
    json_path, npz_path = fa.save(tmp_path / "fa")
    assert json_path.exists() and npz_path.exists()
    _assert_same_analysis(fa, FaceAnalysis.load(tmp_path / "fa"))


def test_face_set_round_trip(analyses, tmp_path):
    fset = FaceSet.from_analyses([analyses[n] for n in OBAMA[:3]] + [analyses["biden.jpg"]])
    fset.save(tmp_path / "set")
    back = FaceSet.load(tmp_path / "set")
    assert back.outliers == fset.outliers == [3]
    assert back.threshold == fset.threshold and back.identity_model == fset.identity_model
    assert np.array_equal(back.similarity, fset.similarity)
    assert np.array_equal(back.fused_identity, fset.fused_identity)
    for a, b in zip(fset.analyses, back.analyses, strict=True):
        _assert_same_analysis(a, b)


def test_outliers_are_found_when_strangers_are_many(analyses):
    """Two photos of one person and one of another (the median rule alone would flag all three), and three of one
    person with two strangers: the largest group of linked references is the person."""
    fset = FaceSet.from_analyses([analyses["obama.jpg"], analyses["obama2.jpg"], analyses["biden.jpg"]])
    assert fset.outliers == [2]
    fset = FaceSet.from_analyses([analyses[n] for n in OBAMA[:3]] + [analyses["biden.jpg"], analyses["astronaut.jpg"]])
    assert fset.outliers == [3, 4]
