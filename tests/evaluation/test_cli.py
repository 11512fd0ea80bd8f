"""``hifi-portrait eval`` end to end (real photos posing as generated images) and its exit codes."""

from __future__ import annotations

import json
import shutil

import yaml
from typer.testing import CliRunner

from hifi_portrait.cli.main import app

runner = CliRunner()


def test_eval_two_methods_against_a_reference_folder(tmp_path, data_dir):
    refs, ours, other = tmp_path / "refs", tmp_path / "ours", tmp_path / "other"
    for d in (refs, ours, other):
        d.mkdir()
    shutil.copy(data_dir / "obama.jpg", refs / "a.jpg")
    shutil.copy(data_dir / "obama2.jpg", refs / "b.jpg")
    shutil.copy(data_dir / "obama3.jpg", ours / "0.jpg")  # same person
    shutil.copy(data_dir / "biden.jpg", other / "0.jpg")  # another person
    out = tmp_path / "eval"
    res = runner.invoke(
        app,
        [
            "eval",
            "--references",
            str(refs),
            "-g",
            f"ours={ours}",
            "-g",
            str(other),
            "--out",
            str(out),
            "--prompt",
            "a photo of a man",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "| ours |" in res.output and "| other |" in res.output
    assert "CLIP-T and diversity skipped" in res.output
    assert "yaw mp vs dlib68" in res.output  # the independent measurement is on by default
    assert "| yaw dlib68 |" in (out / "ours" / "report.md").read_text()
    for method in ("ours", "other"):
        assert (out / method / "results.csv").is_file() and (out / method / "report.md").is_file()
    assert (out / "comparison.md").is_file() and (out / "comparison_id_similarity.png").is_file()
    ours_sim = json.loads((out / "ours" / "results.json").read_text())["summary"]["id_sim[dlib-resnet-128]_mean"]
    other_sim = json.loads((out / "other" / "results.json").read_text())["summary"]["id_sim[dlib-resnet-128]_mean"]
    assert ours_sim > other_sim


def test_eval_exit_codes(tmp_path, data_dir):
    gen = tmp_path / "gen"
    gen.mkdir()
    out = str(tmp_path / "out")
    # neither manifest nor references: usage error
    assert runner.invoke(app, ["eval", "-g", str(gen), "--out", out]).exit_code == 2
    # a manifest with an unknown key: usage error naming it
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"entries": [{"id": "a", "references": [str(data_dir / "obama.jpg")], "x": 1}]}))
    res = runner.invoke(app, ["eval", str(bad), "-g", str(gen), "--out", out])
    assert res.exit_code == 2 and "unknown key" in res.output
    # an empty generated folder: the job fails on its input
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"entries": [{"id": "a", "references": [str(data_dir / "obama.jpg")]}]}))
    res = runner.invoke(app, ["eval", str(good), "-g", str(gen), "--out", out])
    assert res.exit_code == 1 and "no images" in res.output
    # CLIP weights that are not there: model files missing
    res = runner.invoke(app, ["eval", str(good), "-g", str(gen), "--out", out, "--clip", str(tmp_path / "clip")])
    assert res.exit_code == 3 and "CLIP" in res.output
    # a dlib 68-point model file named explicitly but missing: model files missing (the default is only skipped)
    res = runner.invoke(app, ["eval", str(good), "-g", str(gen), "--out", out, "--dlib68-model", str(tmp_path / "x")])
    assert res.exit_code == 3 and "68-point" in res.output
    res = runner.invoke(app, ["eval", str(good), "-g", str(gen), "--out", out, "--no-dlib68", "--dlib68-model", "x"])
    assert res.exit_code == 2 and "--no-dlib68" in res.output
