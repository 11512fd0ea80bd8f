"""InstantID's published weight layout: pickle -> safetensors conversion (weights_only), loading onto our pipeline
with a tiny IdentityNet, our multi-reference identity and our InstantID-style keypoint map; refusals and key errors.

The checkpoint is a tiny random one in InstantID's exact layout (``{"image_proj": Resampler state dict,
"ip_adapter": {"<i>.to_k_ip.weight", ...}}`` indexed over ``unet.attn_processors``), written with torch.save."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionXLPipeline
from PIL import Image, ImageOps
from typer.testing import CliRunner

from hifi_portrait.cli.main import app
from hifi_portrait.errors import ConfigError, ModelFilesMissingError, WeightsMismatchError
from hifi_portrait.loaders.instantid import (
    convert_instantid_checkpoint,
    instantid_embeddings,
    instantid_ip_layers,
    load_instantid,
    read_instantid_file,
)
from hifi_portrait.models import get_id_attn_processors
from hifi_portrait.models.instantid_projection import InstantIDImageProjection
from hifi_portrait.pipelines import StableDiffusionXLHiFiPortraitPipeline
from hifi_portrait.utils.testing import get_dummy_components, get_dummy_controlnet, get_dummy_face, get_dummy_unet

torch.set_num_threads(1)
runner = CliRunner()
TINY_PROJ = {"num_tokens": 4, "output_dim": 64, "hidden_dim": 32, "num_layers": 2, "num_heads": 2, "ff_mult": 2}


def instantid_state(seed: int = 0) -> dict:
    """A random checkpoint in InstantID's ip-adapter.bin layout for the tiny UNet (cross-attention dim 64)."""
    torch.manual_seed(seed)
    proj = InstantIDImageProjection(**TINY_PROJ)
    with torch.no_grad():
        for p in proj.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    unet = get_dummy_unet()
    modules = dict(unet.named_modules())
    ip = {}
    for i, name in enumerate(unet.attn_processors):
        layer = name.removesuffix(".processor")
        if layer.endswith("attn2"):
            attn = modules[layer]
            shape = (attn.to_k.out_features, attn.to_k.in_features)
            ip[f"{i}.to_k_ip.weight"] = torch.randn(shape) * 0.2
            ip[f"{i}.to_v_ip.weight"] = torch.randn(shape) * 0.2
    return {"image_proj": dict(proj.state_dict()), "ip_adapter": ip}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("instantid")
    state = instantid_state()
    torch.save(state, root / "ip-adapter.bin")
    identitynet = get_dummy_controlnet(get_dummy_unet(), seed=3)
    identitynet.save_pretrained(root / "ControlNetModel")
    converted = convert_instantid_checkpoint(root / "ip-adapter.bin", root / "ip-adapter.safetensors")
    return {"root": root, "state": state, "bin": root / "ip-adapter.bin", "converted": converted}


@pytest.fixture(scope="module")
def kps_map() -> Image.Image:
    """Our landmark generator's InstantID-style 5-keypoint map (canonical face shape, yaw 20 deg), 64x64."""
    from hifi_portrait.landmarks import IdentityShape, generate_landmarks, make_target, render_map

    gen = generate_landmarks(IdentityShape.canonical(), make_target(yaw=20), size=(64, 64))
    return Image.fromarray(render_map(gen, "instantid"))


def embeds(seed: int, n: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 512, generator=g) * 4


def make_pipe(files, controlnet: bool = True) -> StableDiffusionXLHiFiPortraitPipeline:
    components = get_dummy_components(with_image_encoder=False)
    pipe = StableDiffusionXLHiFiPortraitPipeline(**components, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    identitynet = ControlNetModel.from_pretrained(files["root"] / "ControlNetModel") if controlnet else None
    load_instantid(pipe, files["converted"], controlnet=identitynet, id_scale=0.8)
    return pipe


def run(pipe, **kwargs) -> np.ndarray:
    out = pipe(
        "a portrait photo",
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        **kwargs,
    )
    return out.images


def test_conversion_keeps_every_tensor_with_namespaced_keys(files):
    config, proj, ip = read_instantid_file(files["converted"])
    assert config == {"id_embed_dim": 512, "head_dim": 64, **TINY_PROJ}
    state = files["state"]
    assert proj.keys() == state["image_proj"].keys() and ip.keys() == state["ip_adapter"].keys()
    for key, value in state["image_proj"].items():
        torch.testing.assert_close(proj[key], value, rtol=0, atol=0)
    for key, value in state["ip_adapter"].items():
        torch.testing.assert_close(ip[key], value, rtol=0, atol=0)
    # the numbering is InstantID's: index in unet.attn_processors; for this UNet the odd (attn2) ones
    assert sorted(int(k.split(".")[0]) for k in ip) == sorted(2 * [i for i in instantid_ip_layers(get_dummy_unet())])
    assert all(i % 2 == 1 for i in instantid_ip_layers(get_dummy_unet()))


def test_generate_with_identitynet_multi_reference_identity_and_our_keypoint_map(files, kps_map):
    pipe = make_pipe(files)
    # the ID attention got the file's weights at the right layers
    layers = instantid_ip_layers(pipe.unet)
    procs = get_id_attn_processors(pipe.unet)
    assert set(procs) == set(layers.values())
    for i, name in layers.items():
        torch.testing.assert_close(procs[name].to_k_ip.weight, files["state"]["ip_adapter"][f"{i}.to_k_ip.weight"])

    seen = []
    pipe.controlnet.register_forward_pre_hook(
        lambda m, a, kw: seen.append((kw["encoder_hidden_states"], kw["controlnet_cond"])), with_kwargs=True
    )
    refs, quality = embeds(0), [0.9, 0.6, 0.8]
    a = run(pipe, id_embeds=refs, reference_quality=quality, image=kps_map, controlnet_conditioning_scale=0.8)
    assert a.shape == (1, 64, 64, 3) and np.isfinite(a).all()
    # IdentityNet cross-attends to the 4 ID tokens (not the 77 text tokens); CFG "no identity" half = InstantID's
    # projection of a zero embedding, the other half = projection of the fused references
    states, cond_image = seen[0]
    assert states.shape == (2, 4, 64)
    assert cond_image.shape == (2, 3, 64, 64) and 0.5 < float(cond_image.max()) <= 1.0  # the map, scaled to [0, 1]
    with torch.no_grad():
        uncond = pipe.face_refiner.project(torch.zeros(1, 1, 512))
        cond = pipe.face_refiner(refs[None], quality=torch.tensor([quality]))
    torch.testing.assert_close(states[0:1], uncond)
    torch.testing.assert_close(states[1:2], cond)

    # references drive the image; their order does not; the keypoint map matters
    b = run(pipe, id_embeds=embeds(1), reference_quality=quality, image=kps_map, controlnet_conditioning_scale=0.8)
    assert np.abs(a - b).max() > 1e-3
    c = run(
        pipe,
        id_embeds=refs[[2, 0, 1]],
        reference_quality=[0.8, 0.9, 0.6],
        image=kps_map,
        controlnet_conditioning_scale=0.8,
    )
    np.testing.assert_allclose(a, c, atol=1e-4)
    d = run(
        pipe,
        id_embeds=refs,
        reference_quality=quality,
        image=ImageOps.mirror(kps_map),
        controlnet_conditioning_scale=0.8,
    )
    assert np.abs(a - d).max() > 1e-3


def test_zero_scales_give_plain_sdxl_and_one_reference_is_instantid_itself(files, kps_map):
    components = get_dummy_components(with_image_encoder=False)
    components.pop("image_encoder"), components.pop("feature_extractor")
    plain = StableDiffusionXLPipeline(**components, add_watermarker=False)
    plain.set_progress_bar_config(disable=True)
    expected = run(plain, height=64, width=64)
    pipe = make_pipe(files)
    off = run(pipe, id_embeds=embeds(0), image=kps_map, id_scale=0.0, controlnet_conditioning_scale=0.0)
    np.testing.assert_array_equal(off, expected)
    # N = 1: the fused embedding is the embedding itself (InstantID's single-photo input)
    one = embeds(5, n=1)
    with torch.no_grad():
        torch.testing.assert_close(pipe.face_refiner(one[None]), pipe.face_refiner.project(one[None]))


def test_pickle_with_non_tensor_objects_is_refused_not_unpickled(tmp_path, files):
    marker = tmp_path / "pwned"

    class Payload:  # what an unsafe unpickler would execute
        def __reduce__(self):
            return (Path.touch, (marker,))

    state = dict(files["state"])
    state["image_proj"] = {**state["image_proj"], "extra": Payload()}
    torch.save(state, tmp_path / "evil.bin")
    with pytest.raises(WeightsMismatchError, match="NOT unpickled"):
        convert_instantid_checkpoint(tmp_path / "evil.bin", tmp_path / "out.safetensors")
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()
    args = ["convert-instantid", str(tmp_path / "evil.bin"), "--out", str(tmp_path / "o.safetensors")]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "weights_only" in result.output and not marker.exists()


def test_wrong_keys_are_named(tmp_path, files):
    state = {"image_proj": dict(files["state"]["image_proj"]), "ip_adapter": dict(files["state"]["ip_adapter"])}
    state["image_proj"]["layers.1.0.q.weight"] = state["image_proj"].pop("layers.1.0.to_q.weight")
    torch.save(state, tmp_path / "renamed.bin")
    with pytest.raises(WeightsMismatchError) as err:
        convert_instantid_checkpoint(tmp_path / "renamed.bin", tmp_path / "a.safetensors")
    assert "image_proj.layers.1.0.to_q.weight" in str(err.value) and "image_proj.layers.1.0.q.weight" in str(err.value)

    state = {"image_proj": files["state"]["image_proj"], "ip_adapter": dict(files["state"]["ip_adapter"])}
    state["ip_adapter"]["1.to_q_ip.weight"] = state["ip_adapter"].pop("1.to_k_ip.weight")
    torch.save(state, tmp_path / "ip.bin")
    with pytest.raises(WeightsMismatchError, match=r"ip_adapter\.1\.to_q_ip\.weight"):
        convert_instantid_checkpoint(tmp_path / "ip.bin", tmp_path / "b.safetensors")

    torch.save({"image_proj": files["state"]["image_proj"]}, tmp_path / "half.bin")
    with pytest.raises(WeightsMismatchError, match="missing parts: ip_adapter"):
        convert_instantid_checkpoint(tmp_path / "half.bin", tmp_path / "c.safetensors")

    # converts fine but does not fit this UNet: an attention layer index is missing -> named at load time
    state = {"image_proj": files["state"]["image_proj"], "ip_adapter": dict(files["state"]["ip_adapter"])}
    last = max(int(k.split(".")[0]) for k in state["ip_adapter"])
    del state["ip_adapter"][f"{last}.to_k_ip.weight"], state["ip_adapter"][f"{last}.to_v_ip.weight"]
    torch.save(state, tmp_path / "short.bin")
    short = convert_instantid_checkpoint(tmp_path / "short.bin", tmp_path / "short.safetensors")
    pipe = StableDiffusionXLHiFiPortraitPipeline(**get_dummy_components(with_image_encoder=False))
    with pytest.raises(WeightsMismatchError, match=rf"missing keys: ip_adapter\.{last}\.to_k_ip\.weight"):
        load_instantid(pipe, short)


def test_cli_converts_and_explains_missing_or_pickled_inputs(tmp_path, files):
    out = tmp_path / "conv.safetensors"
    result = runner.invoke(app, ["convert-instantid", str(files["bin"]), "--out", str(out), "--fp16"])
    assert result.exit_code == 0, result.output
    _, proj, _ = read_instantid_file(out)
    assert proj["latents"].dtype == torch.float16
    again = runner.invoke(app, ["convert-instantid", str(files["bin"]), "--out", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output
    missing = runner.invoke(app, ["convert-instantid", str(tmp_path / "nope.bin"), "--out", str(out)])
    assert missing.exit_code == 3 and "InstantX/InstantID" in missing.output
    pipe = StableDiffusionXLHiFiPortraitPipeline(**get_dummy_components(with_image_encoder=False))
    with pytest.raises(ConfigError, match="convert-instantid"):
        load_instantid(pipe, files["bin"])
    with pytest.raises(ModelFilesMissingError, match="convert-instantid"):
        load_instantid(pipe, tmp_path / "absent.safetensors")


def test_identity_must_be_512d_arcface(tmp_path):
    dlib_like = [get_dummy_face(i) for i in range(2)]  # 128-d vectors like the default dlib embedder
    with pytest.raises(ConfigError, match="512-d insightface ArcFace"):
        instantid_embeddings(dlib_like, embedding_norm=20.0)
    faces = []
    for i in range(3):
        f = get_dummy_face(i)
        v = np.random.default_rng(i).standard_normal(512).astype(np.float32)
        f.identity, f.identity_model = v / np.linalg.norm(v), "insightface-glintr100"
        faces.append(f)
    emb, quality = instantid_embeddings(faces, embedding_norm=20.0)
    assert emb.shape == (3, 512) and np.allclose(np.linalg.norm(emb, axis=1), 20.0)
    np.testing.assert_allclose(emb[1] / 20.0, faces[1].identity, rtol=1e-6)
    assert quality.shape == (3,)
    with pytest.raises(ConfigError, match="embedder"):
        instantid_embeddings(faces)


def test_save_pretrained_after_load_instantid_keeps_everything(tmp_path, files, kps_map):
    """After load_instantid: the projection, IdentityNet, the ID attention and controlnet_context (registered
    configuration) all survive save_pretrained -> from_pretrained."""
    pipe = make_pipe(files)
    before = run(pipe, id_embeds=embeds(0), image=kps_map)
    assert pipe.config.controlnet_context == "id_tokens"
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = StableDiffusionXLHiFiPortraitPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert (
        loaded.controlnet_context == "id_tokens" and type(loaded.face_refiner).__name__ == "InstantIDImageProjection"
    )
    np.testing.assert_allclose(run(loaded, id_embeds=embeds(0), image=kps_map), before, atol=1e-5)


def test_a_load_that_fails_after_the_checks_leaves_the_pipeline_as_it_was(tmp_path, files, kps_map, monkeypatch):
    """A failure once the file is accepted (here: out of memory half-way through installing the processors) puts
    back the earlier processors, face refiner, HiFi-Net, ControlNet and config: the next image is bit-identical."""
    import hifi_portrait.loaders.instantid as loader

    pipe = make_pipe(files)
    kwargs = {"id_embeds": embeds(0), "image": kps_map, "controlnet_conditioning_scale": 0.5}
    before = run(pipe, **kwargs)
    parts = {name: getattr(pipe, name) for name in ("face_refiner", "hifi_net", "controlnet")}
    processors = dict(pipe.unet.attn_processors)
    config = dict(pipe.config)
    other = convert_instantid_checkpoint(_saved(tmp_path, instantid_state(seed=1)), tmp_path / "other.safetensors")
    install = loader.install_id_attention

    def install_half_then_fail(unet, layer_names, **kw):
        install(unet, layer_names=list(layer_names)[:3], **kw)
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(loader, "install_id_attention", install_half_then_fail)
    with pytest.raises(torch.OutOfMemoryError):
        load_instantid(pipe, other, controlnet=get_dummy_controlnet(get_dummy_unet(), seed=9))
    assert {name: getattr(pipe, name) for name in parts} == parts
    assert dict(pipe.unet.attn_processors) == processors and dict(pipe.config) == config
    np.testing.assert_array_equal(run(pipe, **kwargs), before)
    # and the same file loads once the failure is gone
    monkeypatch.setattr(loader, "install_id_attention", install)
    load_instantid(pipe, other)
    assert np.abs(run(pipe, **kwargs) - before).max() > 1e-4


def _saved(folder: Path, state: dict) -> Path:
    path = folder / "other.bin"
    torch.save(state, path)
    return path
