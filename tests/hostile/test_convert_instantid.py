"""Bad-input corpus, InstantID checkpoints: ``convert-instantid`` (and the converted files ``generate --instantid``
reads) refuse every hostile file with a typed error naming the file and the key, or convert it correctly.

Shapes and index ranges are checked against InstantID's layout before anything is built: a 1-D ``proj_in.weight``
is a typed error (not an IndexError), ``layers.60000.*`` is refused at once (it used to grow to 6 GB). Pickles are
read only with ``weights_only=True``: no malicious payload runs. Within 10 s each (sizes in under a second), with
bounded memory. Cases are generated (instantid_cases.py) from a tiny random checkpoint in InstantID's layout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from instantid_cases import MARKER, instantid_cases, instantid_state
from safetensors.torch import load_file
from typer.testing import CliRunner

from hifi_portrait.cli.main import app
from hifi_portrait.errors import AdapterFormatError
from hifi_portrait.loaders.instantid import PROJECTION_SCHEMA, convert_instantid_checkpoint, read_instantid_file
from hifi_portrait.models.instantid_projection import InstantIDImageProjection

torch.set_num_threads(1)
SECONDS = 10.0
FAST = 1.0
CASES = instantid_cases()
HUGE = ["layers-60000", "ip-index-60000", "tokens-5000", "width-10000", "converted-config-num_layers-200000"]
runner = CliRunner()


@pytest.fixture(scope="module")
def good() -> dict:
    return instantid_state()


def attempt(api: str, path, folder):
    if api == "convert":
        return convert_instantid_checkpoint(path, folder / "out.safetensors", overwrite=True)
    return read_instantid_file(path)


@pytest.mark.parametrize("make, api, expect", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_instantid_corpus(good, tmp_path, make, api, expect):
    path = make(tmp_path, good)
    kind, what = expect
    start = time.perf_counter()
    if kind == "ok":
        out = attempt(api, path, tmp_path)
        assert time.perf_counter() - start < SECONDS
        config, proj, ip = read_instantid_file(out)
        source = torch.load(path, weights_only=True)
        assert proj.keys() == source["image_proj"].keys() and ip.keys() == source["ip_adapter"].keys()
        for part, sd in (("image_proj", proj), ("ip_adapter", ip)):
            for key, value in sd.items():
                assert torch.equal(value, source[part][key])
        return
    with pytest.raises(kind, match=what) as info:
        attempt(api, path, tmp_path)
    assert time.perf_counter() - start < SECONDS
    message = str(info.value)
    assert str(path) in message and "Traceback" not in message and len(message) < 2000
    assert not (tmp_path / MARKER).exists(), "a pickled payload ran"
    assert not (tmp_path / "out.safetensors").exists() and not list(tmp_path.glob("*.tmp"))


def test_there_are_enough_cases():
    assert len([c for c in CASES if c[2] == "convert"]) >= 25 and len(CASES) >= 45
    assert set(HUGE) <= {c[0] for c in CASES}


def test_sizes_and_indices_are_refused_in_well_under_a_second(good, tmp_path):
    cases = {name: (make, api) for name, make, api, _ in CASES}
    for name in HUGE:
        make, api = cases[name]
        path = make(tmp_path, good)
        start = time.perf_counter()
        with pytest.raises(AdapterFormatError):
            attempt(api, path, tmp_path)
        assert time.perf_counter() - start < FAST, name


def test_sizes_and_indices_are_refused_with_bounded_memory(good, tmp_path):
    """The huge-size checkpoints are converted in a process whose address space may grow by at most 1 GiB."""
    cases = {name: make for name, make, api, _ in CASES if api == "convert"}
    paths = [str(cases[name](tmp_path, good)) for name in HUGE if name in cases]
    script = textwrap.dedent(
        f"""
        import resource
        import torch
        from hifi_portrait.errors import AdapterFormatError
        from hifi_portrait.loaders.instantid import convert_instantid_checkpoint
        vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize")) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))
        for path in {paths!r}:
            try:
                convert_instantid_checkpoint(path, path + ".safetensors")
            except AdapterFormatError:
                print("refused", path)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [line.split(" ", 1)[1] for line in done.stdout.splitlines() if line.startswith("refused")] == paths


def test_projection_schema_lists_every_constructor_argument():
    import inspect

    params = [p for p in inspect.signature(InstantIDImageProjection.__init__).parameters if p != "self"]
    assert sorted(params) == sorted(PROJECTION_SCHEMA)


@pytest.mark.parametrize(
    "name, code",
    [
        ("proj_in-1d", 1),
        ("layers-60000", 1),
        ("malicious-os-system", 1),
        ("int8-tensor", 1),
        ("random-bytes", 1),
        ("ip-index-60000", 1),
    ],
)
def test_cli_refuses_with_exit_code_1(good, tmp_path, name, code):
    path = {c[0]: c[1] for c in CASES}[name](tmp_path, good)
    result = runner.invoke(app, ["convert-instantid", str(path), "--out", str(tmp_path / "out.safetensors")])
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit)
    text = " ".join(result.output.split())
    assert "error:" in text and path.name in text and "Traceback" not in text
    assert not (tmp_path / "out.safetensors").exists() and not (tmp_path / MARKER).exists()


def test_cli_exit_codes_for_missing_input_and_bad_output(good, tmp_path):
    torch.save(good, tmp_path / "ip-adapter.bin")
    missing = runner.invoke(
        app, ["convert-instantid", str(tmp_path / "nope.bin"), "--out", str(tmp_path / "a.safetensors")]
    )
    assert missing.exit_code == 3 and "nope.bin" in missing.output
    not_st = runner.invoke(
        app, ["convert-instantid", str(tmp_path / "ip-adapter.bin"), "--out", str(tmp_path / "a.bin")]
    )
    assert not_st.exit_code == 2 and ".safetensors" in not_st.output
    (tmp_path / "exists.safetensors").write_bytes(b"keep me")
    exists = runner.invoke(
        app, ["convert-instantid", str(tmp_path / "ip-adapter.bin"), "--out", str(tmp_path / "exists.safetensors")]
    )
    assert exists.exit_code == 2 and (tmp_path / "exists.safetensors").read_bytes() == b"keep me"
    ok = runner.invoke(
        app, ["convert-instantid", str(tmp_path / "ip-adapter.bin"), "--out", str(tmp_path / "b.safetensors")]
    )
    assert ok.exit_code == 0, ok.output
    assert load_file(str(tmp_path / "b.safetensors")).keys()
