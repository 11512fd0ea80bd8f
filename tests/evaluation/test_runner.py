"""The protocol runner end to end on real photos posing as generated images, with known expected values."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil

import numpy as np
import pytest
import yaml

from hifi_portrait.errors import ConfigError, DatasetError
from hifi_portrait.evaluation import load_manifest, write_comparison, write_report

DLIB = "dlib-resnet-128"


@pytest.fixture(scope="module")
def bench(tmp_path_factory, data_dir, evaluator):
    """A manifest + a folder of 'generated' images whose correct scores are known."""
    root = tmp_path_factory.mktemp("bench")
    gen = root / "gen"
    gen.mkdir()
    shutil.copy(data_dir / "obama.jpg", gen / "e1_0.jpg")  # a copy of a reference: copy-paste max = +1
    shutil.copy(data_dir / "obama3.jpg", gen / "e1_1.jpg")  # the ground truth itself: copy-paste = -1
    shutil.copy(data_dir / "biden.jpg", gen / "e1_2.jpg")  # another person
    rng = np.random.default_rng(0)
    from PIL import Image

    Image.fromarray(np.full((128, 128, 3), 128, np.uint8)).save(gen / "e1_3.png")  # no face
    (gen / "e1_4.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")  # unreadable
    shutil.copy(data_dir / "astronaut.jpg", gen / "e2_0.jpg")

    astro = evaluator.analyze(data_dir / "astronaut.jpg").face
    target_lm = np.asarray(astro.landmarks, dtype=np.float64).copy()
    target_lm[:, :2] += (3.0, 4.0)  # every point 5 px away from where it will be measured
    np.save(root / "e2_landmarks.npy", target_lm)
    iod = float(np.linalg.norm(target_lm[33, :2] - target_lm[263, :2]))
    names = [k for k, v in astro.blendshapes.items() if v < 0.5][:2]
    commanded_bs = {k: astro.blendshapes[k] + 0.25 for k in names}
    manifest = {
        "name": "unit-bench",
        "generated_pattern": "{id}_*",
        "entries": [
            {
                "id": "e1",
                "references": [str(data_dir / "obama.jpg"), str(data_dir / "obama2.jpg")],
                "ground_truth": str(data_dir / "obama3.jpg"),
                "prompt": "a photo of a man",
            },
            {
                "id": "e2",
                "references": [str(data_dir / "astronaut.jpg")],
                "prompt": "a photo of an astronaut",
                "target": {
                    "pose": {"yaw": astro.pose.yaw + 10.0, "pitch": astro.pose.pitch},
                    "blendshapes": commanded_bs,
                    "landmarks": "e2_landmarks.npy",
                },
            },
            {"id": "e3", "references": [str(data_dir / "biden.jpg")], "prompt": "nothing was generated for this"},
        ],
    }
    (root / "bench.yaml").write_text(yaml.safe_dump(manifest))
    return {"root": root, "gen": gen, "iod": iod, "astro": astro, "rng": rng}


@pytest.fixture(scope="module")
def result(bench, evaluator):
    return evaluator.evaluate(load_manifest(bench["root"] / "bench.yaml"), bench["gen"], method="copies")


def test_rows_counts_and_detection_failures(result):
    rows = {r["image"].rsplit("/", 1)[-1]: r for r in result.rows}
    assert len(rows) == 6
    assert not rows["e1_3.png"]["face_detected"] and "no usable face" in rows["e1_3.png"]["failure"]
    assert not rows["e1_4.jpg"]["face_detected"] and "unreadable" in rows["e1_4.jpg"]["failure"]
    assert result.summary["n_detected"] == 4
    assert result.summary["detection_rate"] == pytest.approx(4 / 6)
    assert result.summary["n_entries_without_images"] == 1


def test_identity_and_copy_paste_known_values(result):
    rows = {r["image"].rsplit("/", 1)[-1]: r for r in result.rows}
    assert rows["e1_0.jpg"][f"copy_paste_max[{DLIB}]"] == pytest.approx(1.0, abs=1e-6)
    assert rows["e1_1.jpg"][f"copy_paste[{DLIB}]"] == pytest.approx(-1.0, abs=1e-6)
    assert rows["e1_1.jpg"][f"id_sim_gt[{DLIB}]"] == pytest.approx(1.0, abs=1e-6)
    # same person scores higher than another person; the generated copy of a reference is similar to it
    assert rows["e1_0.jpg"][f"id_sim[{DLIB}]"] > rows["e1_2.jpg"][f"id_sim[{DLIB}]"] + 0.05
    assert rows["e2_0.jpg"][f"id_sim[{DLIB}]"] == pytest.approx(1.0, abs=1e-6)
    e1 = next(e for e in result.entries if e["entry"] == "e1")
    assert 0.0 < e1[f"ref_self_sim[{DLIB}]"] < 1.0


def test_control_errors_known_values(result, bench):
    row = next(r for r in result.rows if r["entry"] == "e2")
    assert row["yaw_error"] == pytest.approx(10.0, abs=1.0)
    assert row["pitch_error"] == pytest.approx(0.0, abs=1e-3)
    assert "roll_error" not in row  # roll was not commanded
    assert row["expression_error"] == pytest.approx(0.25, abs=1e-6)
    assert row["landmark_nme"] == pytest.approx(5.0 / bench["iod"], rel=1e-6)


def test_skipped_metrics_are_announced_not_faked(result):
    text = " ".join(result.notices)
    assert "CLIP-T and diversity skipped" in text and "FID/KID skipped" in text
    assert not any("clip_t" in r for r in result.rows)
    assert "fid" not in result.summary


def test_report_files(result, tmp_path):
    files = write_report(result, tmp_path / "ours")
    assert {"csv", "json", "markdown", "id_plot", "pose_plot"} <= set(files)
    with files["csv"].open() as fh:
        assert len(list(csv.DictReader(fh))) == 6
    data = json.loads(files["json"].read_text())
    assert data["summary"]["n_images"] == 6 and data["method"] == "copies"
    md = files["markdown"].read_text()
    assert "| copies |" in md and "ID sim (dlib-resnet-128)" in md and "Notices" in md
    other = dataclasses.replace(result, method="other")
    comp = write_comparison([result, other], tmp_path / "cmp")
    assert comp["markdown"].read_text().count("| copies |") == 1 and "| other |" in comp["markdown"].read_text()
    assert comp["id_plot"].stat().st_size > 0


def test_two_recognizers_are_both_reported(bench, data_dir, evaluator):
    from hifi_portrait.evaluation import Evaluator
    from hifi_portrait.face import Detection, DlibEmbedder

    class MirroredDlib(DlibEmbedder):  # a second, genuinely different computation: dlib on the mirrored photo
        name = "dlib-mirrored"

        def embed(self, image, detection):
            w = image.shape[1]
            x1, y1, x2, y2 = detection.bbox
            kps = detection.keypoints.copy()
            kps[:, 0] = w - 1 - kps[:, 0]
            kps = kps[[1, 0, 2, 4, 3]]
            flipped = Detection(np.array([w - 1 - x2, y1, w - 1 - x1, y2]), detection.score, kps)
            return super().embed(np.ascontiguousarray(image[:, ::-1]), flipped)

    ev = Evaluator(
        analyzer=evaluator.analyzer, recognizers=[evaluator.analyzer.embedder, MirroredDlib()], progress=False
    )
    entry = {"id": "e1", "references": [str(data_dir / "obama.jpg")], "generated": ["e1_2.jpg"]}
    res = ev.evaluate(load_manifest(_write(bench["root"] / "two.yaml", {"entries": [entry]})), bench["gen"])
    row = res.rows[0]
    assert f"id_sim[{DLIB}]" in row and "id_sim[dlib-mirrored]" in row
    assert row["id_sim[dlib-mirrored]"] != row[f"id_sim[{DLIB}]"]
    assert res.recognizers == [DLIB, "dlib-mirrored"]


def test_independent_dlib68_columns_beside_mediapipe(result, tmp_path):
    """Every detected face is measured a second time by dlib68; its errors use the same commanded pose."""
    detected = [r for r in result.rows if r["face_detected"]]
    for r in detected:
        for axis in ("yaw", "pitch", "roll"):
            assert r[f"{axis}_mp_vs_dlib68"] == pytest.approx(abs(r[axis] - r[f"dlib68_{axis}"]), abs=1e-9)
        assert r["dlib68_box"] in ("dlib-hog", "ours")
        assert {"mouth_open", "eye_open", "mouth_corner_lift", "brow_raise", "bs_jawOpen", "bs_eyeBlink"} <= set(r)
        assert abs(r["yaw"] - r["dlib68_yaw"]) < 5.0  # near-frontal real photos: the two estimators agree
    assert not any("dlib68_yaw" in r for r in result.rows if not r["face_detected"])
    e2 = next(r for r in result.rows if r["entry"] == "e2")
    assert e2["dlib68_yaw_error"] == pytest.approx(abs(e2["dlib68_yaw"] - e2["cmd_yaw"]), abs=1e-9)
    assert e2["dlib68_pose_error"] == pytest.approx((e2["dlib68_yaw_error"] + e2["dlib68_pitch_error"]) / 2)
    assert "dlib68_roll_error" not in e2  # roll was not commanded
    s = result.summary
    assert s["dlib68_pose_error_n"] == 1 and s["yaw_mp_vs_dlib68_n"] == 4
    assert "dlib68_yaw_mean" not in s and "dlib68_box_mean" not in s  # measurements and labels are not scores
    files = write_report(result, tmp_path / "r")
    md = files["markdown"].read_text()
    assert "pose err dlib68" in md and "yaw mp vs dlib68" in md
    table = md.split("## Control per image")[1]
    assert "| yaw mp | yaw dlib68 |" in table and "| mouth open | jawOpen |" in table
    assert table.count("| e1_0.jpg |") == 1 and "e1_3.png" not in table  # no face, no control row
    with files["csv"].open() as fh:
        header = next(csv.reader(fh))
    assert {"dlib68_yaw", "dlib68_pitch", "dlib68_roll", "mouth_open", "eye_open"} <= set(header)


def test_missing_dlib68_model_is_skipped_with_a_notice(monkeypatch, bench, data_dir, evaluator):
    """No face_recognition_models package: the dlib68 columns are skipped with a notice, the rest still runs."""
    from hifi_portrait.evaluation import Evaluator
    from hifi_portrait.face import model_files

    monkeypatch.setattr(model_files, "_package_dir", lambda package: None)
    ev = Evaluator(analyzer=evaluator.analyzer, recognizers=[evaluator.analyzer.embedder], progress=False)
    assert ev.dlib68 is None
    entry = {"id": "e1", "references": [str(data_dir / "obama.jpg")], "generated": ["e1_2.jpg"]}
    res = ev.evaluate(load_manifest(_write(bench["root"] / "nodlib.yaml", {"entries": [entry]})), bench["gen"])
    assert res.rows[0]["face_detected"] and "yaw" in res.rows[0]
    assert not any(k.startswith("dlib68_") or k == "mouth_open" for k in res.rows[0])
    assert any("dlib68 pose/expression skipped" in n and "face_recognition_models" in n for n in res.notices)
    off = Evaluator(analyzer=evaluator.analyzer, progress=False, dlib68=None)
    res = off.evaluate(load_manifest(bench["root"] / "nodlib.yaml"), bench["gen"])
    assert any("skipped: disabled" in n for n in res.notices)


# ------------------------------------------------------------------ bad input
def _write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_bad_manifests_raise_clear_errors(tmp_path, data_dir):
    ref = str(data_dir / "obama.jpg")
    cases = [
        ({"entries": []}, "non-empty list"),
        ({"entries": [{"id": "a", "references": [ref], "colour": 1}]}, "unknown key"),
        ({"entries": [{"id": "a", "references": [str(tmp_path / "nope.jpg")]}]}, "does not exist"),
        ({"entries": [{"id": "a", "references": [ref]}, {"id": "a", "references": [ref]}]}, "duplicate id"),
        ({"entries": [{"references": [ref]}]}, "missing 'id'"),
        ({"entries": [{"id": "a", "references": [ref], "target": {"pose": {"yaw": 400}}}]}, "outside"),
        ({"entries": [{"id": "a", "references": [ref], "target": {"blendshapes": {"jawOpen": 2}}}]}, r"\[0, 1\]"),
        ({"generated_pattern": "*.png", "entries": [{"id": "a", "references": [ref]}]}, "must contain"),
    ]
    for i, (data, message) in enumerate(cases):
        with pytest.raises(ConfigError, match=message):
            load_manifest(_write(tmp_path / f"m{i}.yaml", data))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_manifest(tmp_path / "broken.json")


def test_empty_or_mismatched_generated_folders(tmp_path, data_dir, evaluator):
    entries = [{"id": "a", "references": [str(data_dir / "obama.jpg")]}]
    manifest = load_manifest(_write(tmp_path / "m.yaml", {"entries": entries}))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        evaluator.evaluate(manifest, empty)
    with pytest.raises(DatasetError, match="does not exist"):
        evaluator.evaluate(manifest, tmp_path / "missing")
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(data_dir / "biden.jpg", other / "zzz.jpg")
    with pytest.raises(DatasetError, match="matches the manifest"):
        evaluator.evaluate(manifest, other)
    listed = load_manifest(
        _write(
            tmp_path / "l.yaml",
            {"entries": [{"id": "a", "references": [str(data_dir / "obama.jpg")], "generated": ["gone.png"]}]},
        )
    )
    with pytest.raises(ConfigError, match="not found"):
        evaluator.evaluate(listed, other)


def test_expression_presets_resolve_through_the_landmarks_package(tmp_path, data_dir):
    from hifi_portrait.landmarks import preset_scores

    ref = str(data_dir / "obama.jpg")
    entry = {"id": "a", "references": [ref], "target": {"expression": "smile:0.5", "blendshapes": {"jawOpen": 0.1}}}
    manifest = load_manifest(_write(tmp_path / "m.yaml", {"entries": [entry]}))
    expected = {**preset_scores("smile", 0.5), "jawOpen": 0.1}
    assert manifest.entries[0].target.blendshapes == pytest.approx(expected)
    bad = {"id": "a", "references": [ref], "target": {"expression": "grimace"}}
    with pytest.raises(ConfigError, match="grimace"):
        load_manifest(_write(tmp_path / "b.yaml", {"entries": [bad]}))


def test_landmark_targets_from_the_landmark_generator(tmp_path, data_dir, evaluator):
    """Targets written from hifi_portrait.landmarks load back through the manifest; a photo 'generated' at the
    scale of a canvas twice as large scores the NME of the rescaled points (known value: the points coincide)."""
    from hifi_portrait.evaluation import target_from_generated_landmarks
    from hifi_portrait.landmarks import fit_identity_shape, generate_landmarks, make_target

    astro = evaluator.analyze(data_dir / "astronaut.jpg").face
    gen = generate_landmarks(fit_identity_shape([astro]), make_target(yaw=20, expression="smile:0.5"), size=(256, 320))
    target = target_from_generated_landmarks(gen, tmp_path / "t" / "a.npy", tmp_path)
    entry = {"id": "a", "references": [str(data_dir / "astronaut.jpg")], "target": target}
    manifest = load_manifest(_write(tmp_path / "m.yaml", {"entries": [entry]}))
    t = manifest.entries[0].target
    np.testing.assert_allclose(t.landmarks, gen.landmarks)
    assert t.pose == pytest.approx({"yaw": 20.0, "pitch": 0.0, "roll": 0.0})
    assert t.blendshapes["mouthSmileLeft"] == pytest.approx(0.4)
    assert t.landmarks_image_size == (256, 320)

    # the measured astronaut landmarks, expressed on a canvas of twice the photo's size, rescale onto themselves
    w, h = astro.image_size
    np.save(tmp_path / "double.npy", np.asarray(astro.landmarks) * 2.0)
    entry = {
        "id": "b",
        "references": [str(data_dir / "astronaut.jpg")],
        "target": {"landmarks": "double.npy", "landmarks_image_size": [2 * w, 2 * h]},
    }
    manifest = load_manifest(_write(tmp_path / "n.yaml", {"entries": [entry]}))
    gen_dir = tmp_path / "gen"
    gen_dir.mkdir()
    shutil.copy(data_dir / "astronaut.jpg", gen_dir / "b_0.jpg")
    res = evaluator.evaluate(manifest, gen_dir)
    assert res.rows[0]["landmark_nme"] == pytest.approx(0.0, abs=1e-9)
