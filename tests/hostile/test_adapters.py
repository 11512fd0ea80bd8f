"""Bad-input corpus, adapter files: every hostile file gives a typed error naming the file and the field, or loads.

Within 10 s each (sizes from the header in well under a second), without a traceback, with bounded memory, and a
failed load leaves the pipeline exactly as it was (same processors, components and config; bit-identical outputs).
Nothing in a file makes the loader read another path or the network. Cases are generated (adapter_cases.py) from
one good tiny adapter written by ``save_hifi_portrait`` on the tiny random pipeline.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from adapter_cases import Good, adapter_cases
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from hifi_portrait.cli.main import app
from hifi_portrait.errors import AdapterFormatError, WeightsMismatchError
from hifi_portrait.loaders.adapter_file import FACE_REFINER_SCHEMA, HIFI_NET_SCHEMA
from hifi_portrait.models import FaceRefiner, HiFiNetModel, get_id_attn_processors
from hifi_portrait.pipelines import StableDiffusionXLHiFiPortraitPipeline
from hifi_portrait.utils.testing import get_dummy_adapter, get_dummy_components, get_dummy_face, randomize_

torch.set_num_threads(1)
SECONDS = 10.0  # the longest any single bad input may take
FAST = 1.0  # sizes read from the header are refused before anything is allocated
CASES = adapter_cases()
HUGE = [
    "num_tokens-2e9-float",
    "num_tokens-2e9-int",
    "num_layers-200000",
    "ip-num_tokens-2000000000",
    "branch_layers-200000",
    "block_out_channels-100-levels",
    "layers-5000",
    "layer-entry-huge",
    "parts-nested-100000",
    "config-2-million-characters",
    "header-claims-2^60-bytes",
]
DATA = Path(__file__).resolve().parents[1] / "data"
runner = CliRunner()


def make_pipe() -> StableDiffusionXLHiFiPortraitPipeline:
    pipe = StableDiffusionXLHiFiPortraitPipeline(**get_dummy_components(), add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def landmark_map() -> np.ndarray:
    img = np.zeros((64, 64, 3), dtype=np.uint8)
    for x, y in [(22, 26), (42, 26), (32, 36), (25, 46), (39, 46)]:
        img[y - 1 : y + 2, x - 1 : x + 2] = 255
    return img


def generate(pipe) -> np.ndarray:
    """A 2-step 64x64 generation from 2 references (every adapter part acts on it)."""
    faces = [get_dummy_face(i) for i in range(2)]
    out = pipe(
        prompt="a portrait photo",
        faces=faces,
        landmark_image=landmark_map(),
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    return out.images


@pytest.fixture(scope="module")
def good_path(tmp_path_factory) -> Path:
    pipe = make_pipe()
    pipe.set_hifi_portrait(**get_dummy_adapter(pipe.unet), id_scale=0.8)
    for proc in get_id_attn_processors(pipe.unet).values():
        randomize_(proc, seed=7, std=0.2)  # ID attention unlike the text attention it was initialised from
    path = tmp_path_factory.mktemp("good") / "good.safetensors"
    pipe.save_hifi_portrait(path)
    return path


@pytest.fixture(scope="module")
def good(good_path) -> Good:
    with safe_open(str(good_path), framework="pt") as f:
        meta = dict(f.metadata())
    return Good(data=good_path.read_bytes(), tensors=load_file(str(good_path)), meta=meta)


@pytest.fixture(scope="module")
def loaded(good_path):
    """The tiny pipeline with the good adapter loaded, shared by every error case (which must not change it)."""
    pipe = make_pipe()
    pipe.load_hifi_portrait(good_path)
    return pipe


def state(pipe) -> tuple:
    return dict(pipe.unet.attn_processors), pipe.face_refiner, pipe.hifi_net, dict(pipe.config)


def assert_unchanged(pipe, before: tuple) -> None:
    processors, refiner, hifi_net, config = state(pipe)
    assert processors.keys() == before[0].keys()
    assert all(processors[k] is before[0][k] for k in processors), "a failed load changed the attention processors"
    assert refiner is before[1] and hifi_net is before[2] and config == before[3]


@pytest.mark.parametrize("make, expect", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_adapter_corpus(loaded, good, tmp_path, make, expect):
    path = make(tmp_path, good)
    kind, what = expect
    if kind == "ok":
        pipe = make_pipe()
        start = time.perf_counter()
        assert pipe.load_hifi_portrait(path) == what
        assert time.perf_counter() - start < SECONDS
        assert (pipe.face_refiner is not None) == ("face_refiner" in what)
        assert len(get_id_attn_processors(pipe.unet)) == (12 if "ip_attn" in what else 0)
        return
    before = state(loaded)
    start = time.perf_counter()
    with pytest.raises(kind, match=what) as info:
        loaded.load_hifi_portrait(path)
    assert time.perf_counter() - start < SECONDS
    message = str(info.value)
    assert str(path) in message and "Traceback" not in message and len(message) < 2000
    assert_unchanged(loaded, before)


def test_there_are_enough_cases():
    errors = [c for c in CASES if c[2][0] != "ok"]
    assert len(CASES) >= 60 and len(errors) >= 55
    assert set(HUGE) <= {c[0] for c in CASES}


def test_sizes_from_the_header_are_refused_in_well_under_a_second(loaded, good, tmp_path):
    cases = {name: make for name, make, _ in CASES}
    for name in HUGE:
        path = cases[name](tmp_path, good)
        start = time.perf_counter()
        with pytest.raises(AdapterFormatError):
            loaded.load_hifi_portrait(path)
        assert time.perf_counter() - start < FAST, name


def test_sizes_from_the_header_are_refused_with_bounded_memory(good, good_path, tmp_path):
    """The huge-size files are loaded in a process whose address space may grow by at most 1 GiB after setup."""
    cases = {name: make for name, make, _ in CASES}
    paths = [str(cases[name](tmp_path, good)) for name in HUGE]
    script = textwrap.dedent(
        f"""
        import resource, sys
        import torch
        from hifi_portrait.errors import AdapterFormatError
        from hifi_portrait.pipelines import StableDiffusionXLHiFiPortraitPipeline
        from hifi_portrait.utils.testing import get_dummy_components
        pipe = StableDiffusionXLHiFiPortraitPipeline(**get_dummy_components(), add_watermarker=False)
        pipe.load_hifi_portrait({str(good_path)!r})
        vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize")) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))
        for path in {paths!r}:
            try:
                pipe.load_hifi_portrait(path)
            except AdapterFormatError:
                print("refused", path)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [line.split(" ", 1)[1] for line in done.stdout.splitlines() if line.startswith("refused")] == paths


def test_a_failed_load_leaves_outputs_bit_identical(good, good_path, tmp_path, monkeypatch):
    """Bad files failing at every stage (header, config, dtype, shapes, fit with the UNet, token counts, and the
    commit itself), after a good load: the next generation is bit-identical to the one before the attempts."""
    pipe = make_pipe()
    pipe.load_hifi_portrait(good_path)
    reference = generate(pipe)
    before = state(pipe)
    cases = {name: make for name, make, _ in CASES}
    stages = [
        "truncated-half",
        "config-string-hub-id",
        "num_tokens-2e9-int",
        "layer-entry-[64]",
        "int8-tensor",
        "wrong-shape",
        "layer-not-in-this-unet",
        "layer-dims-not-the-unets",
        "ip-tokens-not-the-refiners",
        "hifi-net-for-another-unet",
    ]
    for name in stages:
        with pytest.raises(WeightsMismatchError):
            pipe.load_hifi_portrait(cases[name](tmp_path, good))
    assert_unchanged(pipe, before)
    np.testing.assert_array_equal(generate(pipe), reference)

    # a failure inside the commit (after the ID processors were swapped, or half-way through registering the
    # models) is rolled back too
    import hifi_portrait.loaders.hifi_portrait_loader as loader

    other = cases["float16-weights"](tmp_path, good)  # a valid file with other weights
    real_install = loader.install_id_attention

    def install_then_fail(*args, **kwargs):
        real_install(*args, **kwargs)
        raise RuntimeError("simulated failure while installing")

    monkeypatch.setattr(loader, "install_id_attention", install_then_fail)
    with pytest.raises(RuntimeError, match="simulated"):
        pipe.load_hifi_portrait(other)
    monkeypatch.undo()
    real_register = type(pipe).register_modules
    calls = []

    def register_then_fail(self, **kwargs):
        calls.append(kwargs)
        real_register(self, **kwargs)
        if len(calls) == 1:
            raise RuntimeError("simulated failure while registering")

    monkeypatch.setattr(type(pipe), "register_modules", register_then_fail)
    with pytest.raises(RuntimeError, match="simulated"):
        pipe.load_hifi_portrait(other)
    monkeypatch.undo()
    assert_unchanged(pipe, before)
    np.testing.assert_array_equal(generate(pipe), reference)


def test_a_failed_first_load_leaves_a_plain_pipeline(good, tmp_path):
    pipe = make_pipe()
    before = state(pipe)
    cases = {name: make for name, make, _ in CASES}
    for name in ("layer-dims-not-the-unets", "ip-tokens-not-the-refiners", "float64-tensor"):
        with pytest.raises(WeightsMismatchError):
            pipe.load_hifi_portrait(cases[name](tmp_path, good))
    assert_unchanged(pipe, before)
    assert pipe.face_refiner is None and pipe.hifi_net is None and not get_id_attn_processors(pipe.unet)


def test_nothing_in_a_file_reads_another_path_or_the_network(loaded, good, tmp_path, monkeypatch):
    """String configs (a local folder, a Hub id) are refused before diffusers could resolve them."""
    import socket

    from diffusers.configuration_utils import ConfigMixin

    def forbidden(*args, **kwargs):
        raise AssertionError("the loader tried to read a config from a path or the Hub")

    monkeypatch.setattr(ConfigMixin, "load_config", classmethod(forbidden))
    monkeypatch.setattr(socket.socket, "connect", forbidden)
    folder = tmp_path / "refiner"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "FaceRefiner", "num_tokens": 4}))
    cases = {name: make for name, make, _ in CASES}
    for name in ("config-string-local-path", "config-string-hub-id", "hifi-config-string", "ip-config-string"):
        with pytest.raises(AdapterFormatError, match="JSON string"):
            loaded.load_hifi_portrait(cases[name](tmp_path, good))
    from_folder = tmp_path / "folder_config.safetensors"
    save_file(good.tensors, str(from_folder), metadata={**good.meta, "face_refiner_config": json.dumps(str(folder))})
    with pytest.raises(AdapterFormatError, match="JSON string"):
        loaded.load_hifi_portrait(from_folder)


def test_schemas_list_every_constructor_argument():
    """A new model argument must get a schema entry (type and bounds), or adapter files using it are refused."""
    for cls, schema in ((FaceRefiner, FACE_REFINER_SCHEMA), (HiFiNetModel, HIFI_NET_SCHEMA)):
        params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        assert sorted(params) == sorted(schema), cls.__name__


def test_good_file_with_float16_weights_loads_the_values_stored(good, tmp_path):
    cases = {name: make for name, make, _ in CASES}
    path = cases["float16-weights"](tmp_path, good)
    pipe = make_pipe()
    pipe.load_hifi_portrait(path)
    stored = load_file(str(path))
    for key, value in pipe.face_refiner.state_dict().items():
        assert torch.equal(value, stored[f"face_refiner.{key}"].float())


# ---------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A tiny SDXL folder and CLIP vision encoder folder, as `generate` reads them."""
    root = tmp_path_factory.mktemp("weights")
    components = get_dummy_components()
    encoder, processor = components.pop("image_encoder"), components.pop("feature_extractor")
    encoder.save_pretrained(root / "clip")
    processor.save_pretrained(root / "clip")
    StableDiffusionXLHiFiPortraitPipeline(**components, add_watermarker=False).save_pretrained(root / "sdxl")
    return root


@pytest.mark.parametrize(
    "name",
    [
        "torch-pickle-named-safetensors",
        "config-string-hub-id",
        "num_layers-200000",
        "int8-tensor",
        "layer-name-conv_in",
    ],
)
def test_generate_with_a_bad_adapter_exits_1_with_a_message(weights, good, tmp_path, name):
    adapter = dict((c[0], c[1]) for c in CASES)[name](tmp_path, good)
    args = ["generate", str(DATA / "obama.jpg"), "--base", str(weights / "sdxl"), "--adapter", str(adapter)]
    args += ["--image-encoder", str(weights / "clip"), "--prompt", "x", "--size", "64x64", "--steps", "1"]
    start = time.perf_counter()
    result = runner.invoke(app, args + ["--out", str(tmp_path / "out")])
    assert time.perf_counter() - start < 2 * SECONDS
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # a typed error turned into an exit code, not a crash
    text = " ".join(result.output.split())
    assert "error:" in text and adapter.name in text and "Traceback" not in text
    assert not list((tmp_path / "out").glob("portrait_*.png"))
    assert "[2/4] analysing" not in result.output  # the header is checked before the photos are analysed
