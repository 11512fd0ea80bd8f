"""One-file adapter: format, round trip, clear errors naming wrong keys, partial adapters, path guards."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hifi_portrait.errors import ModelFilesMissingError, WeightsMismatchError
from hifi_portrait.loaders import read_adapter_file, write_adapter_file
from hifi_portrait.models import get_id_attn_processors, install_id_attention
from hifi_portrait.pipelines import StableDiffusionXLHiFiPortraitPipeline
from hifi_portrait.utils.testing import get_dummy_adapter, get_dummy_components

torch.set_num_threads(1)


def _pipe() -> StableDiffusionXLHiFiPortraitPipeline:
    components = get_dummy_components(with_image_encoder=False)
    return StableDiffusionXLHiFiPortraitPipeline(**components, add_watermarker=False)


@pytest.fixture(scope="module")
def adapter_path(tmp_path_factory):
    pipe = _pipe()
    pipe.set_hifi_portrait(**get_dummy_adapter(pipe.unet), id_scale=0.8)
    path = tmp_path_factory.mktemp("adapter") / "hifi.safetensors"
    pipe.save_hifi_portrait(path)
    return path


def _rewrite(src, dst, edit):
    tensors = load_file(str(src))
    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
    edit(tensors, meta)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def test_format_is_namespaced_and_self_describing(adapter_path):
    tensors = load_file(str(adapter_path))
    prefixes = {k.split(".")[0] for k in tensors}
    assert prefixes == {"face_refiner", "hifi_net", "ip_attn"}
    with safe_open(str(adapter_path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "hifi-portrait-adapter"
    assert json.loads(meta["face_refiner_config"])["num_tokens"] == 4
    ip = json.loads(meta["ip_attn_config"])
    assert ip["num_tokens"] == 4 and ip["scale"] == pytest.approx(0.8) and len(ip["layers"]) == 12
    content = read_adapter_file(adapter_path)
    assert content.parts == ["face_refiner", "hifi_net", "ip_attn"]


def test_load_builds_models_from_the_file_alone(adapter_path):
    pipe = _pipe()
    assert pipe.face_refiner is None and not get_id_attn_processors(pipe.unet)
    pipe.load_hifi_portrait(adapter_path, dtype=torch.bfloat16)
    assert pipe.face_refiner.config.num_tokens == 4 and pipe.hifi_net.dtype == torch.bfloat16
    procs = get_id_attn_processors(pipe.unet)
    assert len(procs) == 12 and all(p.scale == pytest.approx(0.8) for p in procs.values())
    src = load_file(str(adapter_path))
    name = next(iter(procs))
    assert torch.equal(procs[name].to_k_ip.weight.float(), src[f"ip_attn.{name}.to_k_ip.weight"].bfloat16().float())
    for key, value in pipe.hifi_net.state_dict().items():
        assert torch.equal(value, src[f"hifi_net.{key}"].to(torch.bfloat16))


def test_renamed_key_is_named(adapter_path, tmp_path):
    def rename(tensors, meta):
        tensors["face_refiner.latentz"] = tensors.pop("face_refiner.latents")

    bad = _rewrite(adapter_path, tmp_path / "bad.safetensors", rename)
    with pytest.raises(WeightsMismatchError) as err:
        _pipe().load_hifi_portrait(bad)
    msg = str(err.value)
    assert "missing keys: face_refiner.latents" in msg and "unexpected keys: face_refiner.latentz" in msg
    assert str(bad) in msg


def test_wrong_shape_missing_ip_key_and_stray_namespace_are_named(adapter_path, tmp_path):
    def reshape(tensors, meta):
        tensors["hifi_net.conv_in.weight"] = torch.zeros(3, 4, 3, 3)

    with pytest.raises(WeightsMismatchError, match=r"wrong shapes: hifi_net\.conv_in\.weight"):
        _pipe().load_hifi_portrait(_rewrite(adapter_path, tmp_path / "a.safetensors", reshape))

    layer = "mid_block.attentions.0.transformer_blocks.0.attn2"

    def drop(tensors, meta):
        del tensors[f"ip_attn.{layer}.to_v_ip.weight"]

    with pytest.raises(WeightsMismatchError, match=rf"missing keys: ip_attn\.{layer}\.to_v_ip\.weight"):
        _pipe().load_hifi_portrait(_rewrite(adapter_path, tmp_path / "b.safetensors", drop))

    def stray(tensors, meta):
        tensors["lora.up.weight"] = torch.zeros(2)

    with pytest.raises(WeightsMismatchError, match=r"lora\.up\.weight"):
        _pipe().load_hifi_portrait(_rewrite(adapter_path, tmp_path / "c.safetensors", stray))


def test_not_an_adapter_and_missing_file(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(1)}, str(plain))
    with pytest.raises(WeightsMismatchError, match="not a hifi-portrait adapter"):
        read_adapter_file(plain)
    with pytest.raises(ModelFilesMissingError, match="nope.safetensors"):
        read_adapter_file(tmp_path / "nope.safetensors")


def test_layers_of_another_architecture_are_named(tmp_path):
    pipe = _pipe()
    procs = install_id_attention(pipe.unet, num_tokens=4)
    name = next(iter(procs))
    path = write_adapter_file(tmp_path / "ip.safetensors", ip_attn={f"up_blocks.9.{name}": procs[name]})
    with pytest.raises(WeightsMismatchError, match=r"ip_attn\.up_blocks\.9\."):
        _pipe().load_hifi_portrait(path)
    # a partial adapter (ID attention only) loads alone
    ok = write_adapter_file(tmp_path / "ok.safetensors", ip_attn=procs)
    other = _pipe()
    assert other.load_hifi_portrait(ok) == ["ip_attn"] and other.face_refiner is None
    assert len(get_id_attn_processors(other.unet)) == 12


def test_token_count_and_dimension_consistency(tmp_path):
    pipe = _pipe()
    adapter = get_dummy_adapter(pipe.unet, num_tokens=4)
    procs = install_id_attention(pipe.unet, num_tokens=6)
    path = write_adapter_file(tmp_path / "x.safetensors", face_refiner=adapter["face_refiner"], ip_attn=procs)
    with pytest.raises(WeightsMismatchError, match="makes 4 ID tokens"):
        _pipe().load_hifi_portrait(path)


def test_output_path_guards(adapter_path, tmp_path):
    pipe = _pipe()
    pipe.load_hifi_portrait(adapter_path)
    with pytest.raises(FileExistsError):
        pipe.save_hifi_portrait(adapter_path)
    with pytest.raises(ValueError, match=".safetensors"):
        pipe.save_hifi_portrait(tmp_path / "adapter.bin")
    out = pipe.save_hifi_portrait(tmp_path / "sub" / "dir" / "a.safetensors", extra_metadata={"step": 10})
    assert read_adapter_file(out).metadata["step"] == "10"
