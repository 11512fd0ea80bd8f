"""StableDiffusionXLHiFiPortraitPipeline on tiny random models: exactness at zero scales, references, CFG,
landmarks, outputs, save/load round-trips, LoRA, multi-ControlNet, CPU offload, dtype."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from hifi_portrait.errors import ModelFilesMissingError
from hifi_portrait.models import get_id_attn_processors
from hifi_portrait.pipelines import HiFiPortraitPipelineOutput, StableDiffusionXLHiFiPortraitPipeline
from hifi_portrait.utils.testing import (
    DUMMY_ID_DIM,
    get_dummy_adapter,
    get_dummy_components,
    get_dummy_controlnet,
    get_dummy_face,
    randomize_,
)


def make_pipe(adapter: bool = True, trained: bool = True, **kwargs) -> StableDiffusionXLHiFiPortraitPipeline:
    components = get_dummy_components()
    components.update(kwargs)
    pipe = StableDiffusionXLHiFiPortraitPipeline(**components, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    if adapter:
        pipe.set_hifi_portrait(**get_dummy_adapter(pipe.unet, trained=trained))
        if trained:  # ID attention different from the text attention it was initialised from
            for proc in get_id_attn_processors(pipe.unet).values():
                randomize_(proc, seed=7, std=0.2)
    return pipe


def run(pipe, seed: int = 0, **kwargs) -> np.ndarray:
    kwargs.setdefault("prompt", "a portrait photo")
    kwargs.setdefault("num_inference_steps", 2)
    kwargs.setdefault("output_type", "np")
    out = pipe(generator=torch.Generator().manual_seed(seed), **kwargs)
    return out.images


@pytest.fixture(scope="module")
def faces():
    return [get_dummy_face(i, quality=0.5 + 0.1 * i) for i in range(3)]


@pytest.fixture(scope="module")
def plain_images() -> np.ndarray:
    components = get_dummy_components(with_image_encoder=False)
    components.pop("image_encoder")
    components.pop("feature_extractor")
    pipe = StableDiffusionXLPipeline(**components, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return run(pipe, height=64, width=64)


def test_zero_scales_reproduce_plain_sdxl_exactly(plain_images, faces, landmark_map):
    pipe = make_pipe()
    out = run(pipe, faces=faces, landmark_image=landmark_map, id_scale=0.0, control_scale=0.0)
    assert out.shape == (1, 64, 64, 3)
    np.testing.assert_array_equal(out, plain_images)
    # each part alone changes the image (the adapter is "trained": non-zero weights everywhere)
    id_only = run(pipe, faces=faces, landmark_image=landmark_map, id_scale=1.0, control_scale=0.0)
    control_only = run(pipe, faces=faces, landmark_image=landmark_map, id_scale=0.0, control_scale=1.0)
    assert np.abs(id_only - plain_images).max() > 1e-3
    assert np.abs(control_only - plain_images).max() > 1e-3


def test_untrained_hifi_net_leaves_sdxl_unchanged(plain_images, faces, landmark_map):
    pipe = make_pipe(trained=False)
    out = run(pipe, faces=faces, landmark_image=landmark_map, id_scale=0.0, control_scale=1.0)
    np.testing.assert_array_equal(out, plain_images)


def test_references_drive_the_output(faces, landmark_map):
    pipe = make_pipe()
    a = run(pipe, faces=faces, landmark_image=landmark_map)
    other = [get_dummy_face(10 + i) for i in range(3)]
    b = run(pipe, faces=other, landmark_image=landmark_map)
    assert np.abs(a - b).max() > 1e-3
    # reference order does not matter (refiner is permutation invariant)
    c = run(pipe, faces=faces[::-1], landmark_image=landmark_map)
    np.testing.assert_allclose(a, c, atol=1e-4)
    # the landmark map matters
    d = run(pipe, faces=faces, landmark_image=255 - landmark_map)
    assert np.abs(a - d).max() > 1e-3


def test_raw_tensors_and_precomputed_tokens_match_faces(faces, landmark_map):
    pipe = make_pipe()
    out = pipe(
        "a portrait photo",
        faces=faces,
        landmark_image=landmark_map,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    assert isinstance(out, HiFiPortraitPipelineOutput)
    assert out.id_tokens.shape == (1, 4, 64)
    assert out.landmark_images[0].size == (64, 64)
    np.testing.assert_array_equal(np.asarray(out.landmark_images[0]), landmark_map)
    # the same ID tokens given directly give the same image
    again = run(pipe, id_tokens=out.id_tokens, landmark_image=landmark_map)
    np.testing.assert_array_equal(again, out.images)
    # raw id_embeds + patch_tokens (no face objects) give the same tokens
    from hifi_portrait.pipelines import reference_pixels

    ids = torch.from_numpy(np.stack([f.identity for f in faces]))
    patches = pipe.encode_patch_tokens([reference_pixels(f) for f in faces], torch.device("cpu"))
    quality = [f.quality.total for f in faces]
    tokens = pipe.encode_id_tokens(id_embeds=ids, patch_tokens=patches, reference_quality=quality)
    torch.testing.assert_close(tokens, out.id_tokens)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_n_references_and_batch(n, landmark_map):
    pipe = make_pipe()
    refs = [get_dummy_face(i) for i in range(n)]
    out = run(
        pipe,
        prompt=["a portrait", "a painting"],
        faces=refs,
        landmark_image=landmark_map,
        num_images_per_prompt=2 if n == 8 else 1,
    )
    assert out.shape == ((4 if n == 8 else 2), 64, 64, 3) and np.isfinite(out).all()


def test_landmark_fn_hook_and_missing_inputs(faces, landmark_map):
    pipe = make_pipe()
    seen = {}

    def landmark_fn(refs, target):
        seen["n"], seen["target"] = len(refs), target
        return landmark_map

    a = run(pipe, faces=faces, landmark_fn=landmark_fn, target={"yaw": 20.0})
    assert seen == {"n": 3, "target": {"yaw": 20.0}}
    np.testing.assert_array_equal(a, run(pipe, faces=faces, landmark_image=landmark_map))
    with pytest.raises(ValueError, match="landmark map"):
        run(pipe, faces=faces)
    with pytest.raises(ValueError, match="192-d"):
        run(pipe, id_embeds=torch.randn(2, 192), landmark_image=landmark_map)
    no_encoder = make_pipe(image_encoder=None, feature_extractor=None)
    with pytest.raises(ModelFilesMissingError, match="CLIP vision"):
        run(no_encoder, faces=faces, landmark_image=landmark_map)
    # identity vectors alone work without an image encoder
    assert run(no_encoder, id_embeds=torch.randn(2, DUMMY_ID_DIM), landmark_image=landmark_map).shape[0] == 1


def test_callback_and_tuple_output(faces, landmark_map):
    pipe = make_pipe()
    steps = []

    def callback(p, i, t, kwargs):
        steps.append(i)
        return {"latents": kwargs["latents"]}

    images, landmarks = pipe(
        "a portrait",
        faces=faces,
        landmark_image=landmark_map,
        num_inference_steps=2,
        output_type="np",
        return_dict=False,
        callback_on_step_end=callback,
        generator=torch.Generator().manual_seed(0),
    )
    assert steps == [0, 1] and images.shape == (1, 64, 64, 3) and len(landmarks) == 1


def test_callback_that_modifies_the_latents(faces, landmark_map):
    """Latents a callback returns are the ones the loop continues (and ends) with."""
    pipe = make_pipe()
    kwargs = {"faces": faces, "landmark_image": landmark_map, "output_type": "latent", "num_inference_steps": 3}
    plain = run(pipe, **kwargs)

    def halve_last(p, i, t, tensors):
        return {"latents": tensors["latents"] * 0.5} if i == p.num_timesteps - 1 else tensors

    torch.testing.assert_close(run(pipe, callback_on_step_end=halve_last, **kwargs), plain * 0.5, rtol=0, atol=0)
    seen = {}

    def zero_first(p, i, t, tensors):
        if i == 0:
            seen["latents"] = tensors["latents"].clone()
            return {"latents": torch.zeros_like(tensors["latents"])}
        return tensors

    changed = run(pipe, callback_on_step_end=zero_first, **kwargs)
    assert seen["latents"].abs().max() > 0 and (changed - plain).abs().max() > 1e-3


def test_adapter_file_and_pipeline_round_trips(tmp_path, faces, landmark_map):
    pipe = make_pipe()
    before = run(pipe, faces=faces, landmark_image=landmark_map)
    path = pipe.save_hifi_portrait(tmp_path / "adapter.safetensors")
    pipe.unload_hifi_portrait()
    assert pipe.face_refiner is None and not get_id_attn_processors(pipe.unet)
    assert pipe.load_hifi_portrait(path) == ["face_refiner", "hifi_net", "ip_attn"]
    np.testing.assert_array_equal(run(pipe, faces=faces, landmark_image=landmark_map), before)  # bit-exact
    pipe.unload_hifi_portrait()
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = StableDiffusionXLHiFiPortraitPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.face_refiner is None and loaded.hifi_net is None
    loaded.load_hifi_portrait(path)
    # the plain diffusers SDXL save_pretrained/from_pretrained round trip itself differs by ~1e-6 (float noise,
    # measured on these tiny models), hence allclose here and bit-exactness for the adapter file above
    np.testing.assert_allclose(run(loaded, faces=faces, landmark_image=landmark_map), before, atol=1e-5)


def test_components_saved_with_the_pipeline(tmp_path, faces, landmark_map):
    pipe = make_pipe(adapter=False)
    adapter = get_dummy_adapter(pipe.unet)
    pipe.set_hifi_portrait(adapter["face_refiner"], adapter["hifi_net"], install_ip_attention=False)
    before = run(pipe, faces=faces, landmark_image=landmark_map)
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = StableDiffusionXLHiFiPortraitPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.face_refiner).__name__ == "FaceRefiner"
    assert type(loaded.hifi_net).__name__ == "HiFiNetModel"
    np.testing.assert_allclose(run(loaded, faces=faces, landmark_image=landmark_map), before, atol=1e-5)


def test_lora_loading(faces, landmark_map):
    from peft import LoraConfig

    pipe = make_pipe()
    before = run(pipe, faces=faces, landmark_image=landmark_map)
    pipe.unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False),
        adapter_name="style",
    )
    after = run(pipe, faces=faces, landmark_image=landmark_map)
    assert np.abs(after - before).max() > 1e-4
    # LoRA layers wrap the text projections only; the ID processors are still in place and used
    assert len(get_id_attn_processors(pipe.unet)) == 12
    # disabling the LoRA gives back the adapter-only image
    pipe.unet.disable_adapters()
    np.testing.assert_allclose(run(pipe, faces=faces, landmark_image=landmark_map), before, atol=1e-6)


def test_lora_file_through_diffusers_loader(tmp_path, faces, landmark_map):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    donor = make_pipe(adapter=False)
    donor.unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    )
    StableDiffusionXLPipeline.save_lora_weights(tmp_path, unet_lora_layers=get_peft_model_state_dict(donor.unet))
    pipe = make_pipe()
    before = run(pipe, faces=faces, landmark_image=landmark_map)
    pipe.load_lora_weights(tmp_path, weight_name="pytorch_lora_weights.safetensors", adapter_name="style")
    assert np.abs(run(pipe, faces=faces, landmark_image=landmark_map) - before).max() > 1e-4
    assert len(get_id_attn_processors(pipe.unet)) == 12


def test_extra_controlnets(faces, landmark_map):
    components = get_dummy_components()
    cn1 = get_dummy_controlnet(components["unet"], seed=1)
    cn2 = get_dummy_controlnet(components["unet"], seed=2)
    single = make_pipe(controlnet=cn1)
    base = run(single, faces=faces, landmark_image=landmark_map, image=landmark_map, controlnet_conditioning_scale=0.0)
    with_cn = run(single, faces=faces, landmark_image=landmark_map, image=landmark_map)
    assert np.abs(with_cn - base).max() > 1e-3
    multi = make_pipe(controlnet=[cn1, cn2])
    both = run(multi, faces=faces, landmark_image=landmark_map, image=[landmark_map, 255 - landmark_map])
    first_only = run(
        multi,
        faces=faces,
        landmark_image=landmark_map,
        image=[landmark_map, 255 - landmark_map],
        controlnet_conditioning_scale=[1.0, 0.0],
    )
    np.testing.assert_allclose(first_only, with_cn, atol=1e-5)
    assert np.abs(both - with_cn).max() > 1e-3
    with pytest.raises(ValueError, match="same length as the number of controlnets"):  # diffusers check_inputs
        run(multi, faces=faces, landmark_image=landmark_map, image=[landmark_map])


def test_model_cpu_offload_onloads_each_model_in_order(faces, landmark_map):
    """With no accelerator here, offload targets "cpu" and nothing can move: what is checked is that every model
    is onloaded by its offload hook before use, in model_cpu_offload_seq order (HiFi-Net's prepare_condition,
    not a forward, included), and that the result is unchanged. test_model_cpu_offload_moves_models_to_cuda
    checks the devices on a GPU machine."""
    pipe = make_pipe()
    expected = run(pipe, faces=faces, landmark_image=landmark_map)
    pipe.enable_model_cpu_offload(device="cpu")
    onloaded = []
    for name in ("text_encoder", "text_encoder_2", "image_encoder", "face_refiner", "hifi_net", "unet", "vae"):
        hook = getattr(pipe, name)._hf_hook
        pre_forward = hook.pre_forward

        def record(module, *args, _name=name, _pre=pre_forward, **kwargs):
            onloaded.append(_name)
            return _pre(module, *args, **kwargs)

        hook.pre_forward = record
    np.testing.assert_allclose(run(pipe, faces=faces, landmark_image=landmark_map), expected, atol=1e-6)
    first = [name for i, name in enumerate(onloaded) if name not in onloaded[:i]]
    assert first == ["text_encoder", "text_encoder_2", "image_encoder", "face_refiner", "hifi_net", "unet", "vae"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to offload to")
def test_model_cpu_offload_moves_models_to_cuda(faces, landmark_map):
    pipe = make_pipe()
    expected = run(pipe, faces=faces, landmark_image=landmark_map)
    pipe.enable_model_cpu_offload(device="cuda")
    out = run(pipe, faces=faces, landmark_image=landmark_map)
    assert all(getattr(pipe, n).device.type == "cpu" for n in ("unet", "hifi_net", "face_refiner", "text_encoder"))
    np.testing.assert_allclose(out, expected, atol=1e-3)


@pytest.fixture(scope="module")
def float32_effects(faces, landmark_map):
    """fp32 images: the reference, HiFi-Net off, references swapped (what a half-precision path must keep)."""
    pipe = make_pipe()
    other = [get_dummy_face(10 + i) for i in range(3)]
    return {
        "ref": run(pipe, faces=faces, landmark_image=landmark_map),
        "hifi_off": run(pipe, faces=faces, landmark_image=landmark_map, control_scale=0.0),
        "swapped": run(pipe, faces=other, landmark_image=landmark_map),
    }


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype, faces, landmark_map, float32_effects):
    ref = float32_effects["ref"]
    hifi_effect = np.abs(ref - float32_effects["hifi_off"]).mean()  # measured 0.023
    swap_effect = np.abs(ref - float32_effects["swapped"]).mean()  # measured 0.014
    pipe = make_pipe()
    pipe.to(dtype)
    assert pipe.hifi_net.dtype == dtype and pipe.face_refiner.dtype == dtype
    assert next(iter(get_id_attn_processors(pipe.unet).values())).to_k_ip.weight.dtype == dtype
    out = run(pipe, faces=faces, landmark_image=landmark_map)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    # the rounding error must be far below what dropping HiFi-Net or the identity would change
    # (measured: fp16 0.0003, bf16 0.0030 mean absolute difference)
    tolerance = (0.05 if dtype == torch.float16 else 0.3) * min(hifi_effect, swap_effect)
    assert np.abs(out - ref).mean() < tolerance
    if dtype == torch.float16:  # fp16 convolutions are slow on CPU: the rest runs once, in bf16
        return
    # the half-precision path responds to the references and to HiFi-Net as the fp32 one does
    other = [get_dummy_face(10 + i) for i in range(3)]
    swapped = run(pipe, faces=other, landmark_image=landmark_map)
    hifi_off = run(pipe, faces=faces, landmark_image=landmark_map, control_scale=0.0)
    assert np.abs((out - swapped) - (ref - float32_effects["swapped"])).mean() < 0.3 * swap_effect
    assert np.abs((out - hifi_off) - (ref - float32_effects["hifi_off"])).mean() < 0.3 * hifi_effect
    # adapter kept in float32 next to a half-precision UNet also works (residuals cast to the UNet's dtype)
    pipe.hifi_net.to(torch.float32)
    pipe.face_refiner.to(torch.float32)
    mixed = run(pipe, faces=faces, landmark_image=landmark_map)
    assert np.abs(mixed - ref).mean() < tolerance


@pytest.fixture(scope="module")
def analyzer():
    from hifi_portrait.face import FaceAnalyzer

    return FaceAnalyzer()


def test_real_reference_photos_through_the_face_package(analyzer, landmark_map):
    from pathlib import Path

    from hifi_portrait.pipelines import reference_pixels

    data = Path(__file__).resolve().parents[1] / "data"
    photos = [str(data / name) for name in ("obama.jpg", "obama2.jpg")]
    pipe = make_pipe()
    pipe.face_analyzer = analyzer
    out = pipe(
        "a portrait",
        reference_images=photos,
        landmark_image=landmark_map,
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    assert out.images.shape == (1, 64, 64, 3) and np.isfinite(out.images).all()
    faces = [analyzer.analyze(p) for p in photos]
    torch.testing.assert_close(pipe.encode_id_tokens(faces=faces[::-1]), out.id_tokens, atol=1e-5, rtol=1e-5)
    other = pipe.encode_id_tokens(faces=[analyzer.analyze(str(data / "tom_hanks.png"))])
    assert (other - out.id_tokens).abs().max() > 1e-3
    # matting: outside the face mask the encoder sees the gray background, inside the photo's pixels
    pixels = reference_pixels(faces[0])
    outside = faces[0].mask == 0
    assert outside.any() and (pixels[outside] == 127).all()
    inside = faces[0].mask == 255
    np.testing.assert_array_equal(pixels[inside], faces[0].encoder_crop[inside])


def test_loads_a_plain_sdxl_checkpoint_folder(tmp_path, faces, landmark_map, plain_images):
    """Any diffusers SDXL folder (no HiFi-Portrait components in model_index.json) loads into the pipeline."""
    components = get_dummy_components(with_image_encoder=False)
    components.pop("image_encoder")
    components.pop("feature_extractor")
    StableDiffusionXLPipeline(**components, add_watermarker=False).save_pretrained(tmp_path / "sdxl")
    pipe = StableDiffusionXLHiFiPortraitPipeline.from_pretrained(tmp_path / "sdxl")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.controlnet is None and pipe.face_refiner is None and pipe.image_encoder is None
    np.testing.assert_allclose(run(pipe, height=64, width=64), plain_images, atol=1e-5)
    pipe.set_hifi_portrait(**get_dummy_adapter(pipe.unet))
    out = run(pipe, id_embeds=torch.from_numpy(np.stack([f.identity for f in faces])), landmark_image=landmark_map)
    assert np.abs(out - plain_images).max() > 1e-3


def test_uint8_array_and_pil_landmark_maps_are_the_same_condition(faces, landmark_map):
    """diffusers scales PIL maps to [0, 1] but not numpy arrays: uint8 arrays must get the same scaling."""
    from PIL import Image

    pipe = make_pipe()
    as_array = pipe(
        prompt="a portrait photo",
        faces=faces,
        landmark_image=landmark_map,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    as_pil = run(pipe, faces=faces, landmark_image=Image.fromarray(landmark_map))
    np.testing.assert_array_equal(as_array.images, as_pil)
    np.testing.assert_array_equal(np.asarray(as_array.landmark_images[0]), landmark_map)
    # the same holds for the images of extra ControlNets (InstantID's keypoint map goes there)
    cn_pipe = make_pipe(controlnet=get_dummy_controlnet(get_dummy_components()["unet"], seed=1))
    cn_array = run(cn_pipe, faces=faces, landmark_image=landmark_map, image=landmark_map)
    cn_pil = run(cn_pipe, faces=faces, landmark_image=landmark_map, image=Image.fromarray(landmark_map))
    np.testing.assert_array_equal(cn_array, cn_pil)


def test_id_scale_of_a_call_applies_to_that_call_only(faces, landmark_map):
    pipe = make_pipe()
    pipe.set_id_scale(0.0)
    kept = run(pipe, faces=faces, landmark_image=landmark_map, control_scale=0.0)  # id_scale left out: stays 0
    np.testing.assert_array_equal(
        kept, run(pipe, faces=faces, landmark_image=landmark_map, id_scale=0.0, control_scale=0.0)
    )
    assert not np.array_equal(
        kept, run(pipe, faces=faces, landmark_image=landmark_map, id_scale=1.0, control_scale=0.0)
    )
    # an explicit scale applies to its call only: the next call without id_scale is the scale-0 image again
    assert all(p.scale == 0.0 for p in get_id_attn_processors(pipe.unet).values())
    np.testing.assert_array_equal(kept, run(pipe, faces=faces, landmark_image=landmark_map, control_scale=0.0))
    # also when the call fails
    with pytest.raises(ValueError, match="landmark map"):
        run(pipe, faces=faces, id_scale=0.5)
    assert all(p.scale == 0.0 for p in get_id_attn_processors(pipe.unet).values())


def test_a_unet_shared_through_from_pipe_leaves_the_plain_pipeline_unchanged(plain_images, faces, landmark_map):
    """The ID processors on a UNet shared with a plain SDXL pipeline see no ID tokens from it: plain attention."""
    components = get_dummy_components()
    sdxl = StableDiffusionXLPipeline(**components, add_watermarker=False)
    sdxl.set_progress_bar_config(disable=True)
    before = run(sdxl, height=64, width=64)
    pipe = StableDiffusionXLHiFiPortraitPipeline.from_pipe(sdxl)
    assert pipe.unet is sdxl.unet
    pipe.set_hifi_portrait(**get_dummy_adapter(pipe.unet))
    for proc in get_id_attn_processors(pipe.unet).values():
        randomize_(proc, seed=7, std=0.2)
    assert np.abs(run(pipe, faces=faces, landmark_image=landmark_map) - before).max() > 1e-3
    np.testing.assert_array_equal(run(sdxl, height=64, width=64), before)
    np.testing.assert_array_equal(before, plain_images)


def write_tiny_ip_adapter(unet, path, seed: int = 3, image_embed_dim: int = 32):
    """A random IP-Adapter (base, 4 image tokens) for ``unet`` in diffusers' layout, saved as safetensors:
    ``image_proj.proj/norm.*`` and ``ip_adapter.<i>.to_k_ip/to_v_ip.weight`` (``i``: index of the layer in
    ``unet.attn_processors``, cross-attentions only)."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    tensors = {
        "image_proj.proj.weight": torch.randn(4 * cross, image_embed_dim, generator=gen) * 0.3,
        "image_proj.proj.bias": torch.randn(4 * cross, generator=gen) * 0.1,
        "image_proj.norm.weight": torch.ones(cross),
        "image_proj.norm.bias": torch.zeros(cross),
    }
    modules = dict(unet.named_modules())
    for i, name in enumerate(unet.attn_processors):
        attn = modules[name.removesuffix(".processor")]
        if attn.is_cross_attention:
            shape = (attn.to_k.out_features, cross)
            tensors[f"ip_adapter.{i}.to_k_ip.weight"] = torch.randn(shape, generator=gen) * 0.3
            tensors[f"ip_adapter.{i}.to_v_ip.weight"] = torch.randn(shape, generator=gen) * 0.3
    save_file(tensors, str(path))
    return path


def test_ip_adapter_composes_with_the_id_attention(tmp_path, faces, landmark_map):
    from PIL import Image

    pipe = make_pipe()
    base = run(pipe, faces=faces, landmark_image=landmark_map)
    write_tiny_ip_adapter(pipe.unet, tmp_path / "ip.safetensors")
    encoder = pipe.image_encoder
    pipe.load_ip_adapter(tmp_path, subfolder="", weight_name="ip.safetensors", image_encoder_folder=None)
    procs = get_id_attn_processors(pipe.unet)
    assert len(procs) == 12 and all(p.ip_adapter is not None for p in procs.values())  # ours kept, IP inside
    style = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    pipe.set_ip_adapter_scale(0.0)
    np.testing.assert_allclose(
        run(pipe, faces=faces, landmark_image=landmark_map, ip_adapter_image=style), base, atol=1e-5
    )
    pipe.set_ip_adapter_scale(0.8)
    both = run(pipe, faces=faces, landmark_image=landmark_map, ip_adapter_image=style)
    assert np.abs(both - base).max() > 1e-3  # the IP-Adapter's scale changes the output
    no_id = run(pipe, faces=faces, landmark_image=landmark_map, ip_adapter_image=style, id_scale=0.0)
    assert np.abs(no_id - both).max() > 1e-3  # and so does ours, beside it
    # precomputed IP-Adapter embeddings give the same image (diffusers' ip_adapter_image_embeds)
    embeds = pipe.prepare_ip_adapter_image_embeds(style, None, torch.device("cpu"), 1, True)
    again = run(pipe, faces=faces, landmark_image=landmark_map, ip_adapter_image_embeds=embeds)
    np.testing.assert_allclose(again, both, atol=1e-6)
    # diffusers cannot save a pipeline with an IP-Adapter: refused with a message saying what to do
    from hifi_portrait.errors import ConfigError

    with pytest.raises(ConfigError, match="unload_ip_adapter"):
        pipe.save_pretrained(tmp_path / "with_ip")
    # unloading removes the IP-Adapter only: our image encoder and ID attention stay, the output is ours again
    pipe.unload_ip_adapter()
    assert pipe.image_encoder is encoder and len(get_id_attn_processors(pipe.unet)) == 12
    np.testing.assert_allclose(run(pipe, faces=faces, landmark_image=landmark_map), base, atol=1e-6)
    # the other order: IP-Adapter first, then our adapter
    other = make_pipe(adapter=False)
    other.load_ip_adapter(tmp_path, subfolder="", weight_name="ip.safetensors", image_encoder_folder=None)
    other.set_hifi_portrait(**get_dummy_adapter(other.unet))
    assert all(p.ip_adapter is not None for p in get_id_attn_processors(other.unet).values())
    other.set_ip_adapter_scale(0.8)
    ours_off = run(other, faces=faces, landmark_image=landmark_map, ip_adapter_image=style, id_scale=0.0)
    # with our scale at 0, the composed processor computes exactly what diffusers' IP-Adapter processor does
    from hifi_portrait.models import remove_id_attention

    assert remove_id_attention(other.unet) == 12
    diffusers_only = run(other, faces=faces, landmark_image=landmark_map, ip_adapter_image=style)
    np.testing.assert_allclose(ours_off, diffusers_only, atol=1e-6)


def test_diffusers_unload_ip_adapter_from_a_pipeline_sharing_the_unet(tmp_path, plain_images, faces, landmark_map):
    """diffusers' ``unload_ip_adapter`` on a plain SDXL pipeline that shares our UNet resets each layer with
    ``type(processor)()``: that used to fail on ours (TypeError, missing arguments) half-way through, leaving the
    IP-Adapter's weights inside our processors and its image projection gone. Now the plain pipeline is plain SDXL
    again, and ours generates without the IP-Adapter, with its ID attention."""
    from PIL import Image

    pipe = make_pipe()
    base = run(pipe, faces=faces, landmark_image=landmark_map)
    write_tiny_ip_adapter(pipe.unet, tmp_path / "ip.safetensors")
    pipe.load_ip_adapter(tmp_path, subfolder="", weight_name="ip.safetensors", image_encoder_folder=None)
    pipe.set_ip_adapter_scale(0.8)
    style = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    assert np.abs(run(pipe, faces=faces, landmark_image=landmark_map, ip_adapter_image=style) - base).max() > 1e-3
    shared = {k: getattr(pipe, k) for k in StableDiffusionXLPipeline._get_signature_keys(StableDiffusionXLPipeline)[0]}
    sdxl = StableDiffusionXLPipeline(**shared, add_watermarker=False)
    sdxl.set_progress_bar_config(disable=True)
    sdxl.unload_ip_adapter()
    np.testing.assert_array_equal(run(sdxl, height=64, width=64), plain_images)
    np.testing.assert_allclose(run(pipe, faces=faces, landmark_image=landmark_map), base, atol=1e-6)
    assert np.abs(run(pipe, faces=faces, landmark_image=landmark_map, id_scale=0.0) - base).max() > 1e-3
    # the shared UNet is left with placeholders (plain attention, no weights), which ours replaces for each call
    assert not get_id_attn_processors(pipe.unet)


def test_save_pretrained_keeps_the_whole_adapter(tmp_path, faces, landmark_map, caplog):
    """save_pretrained -> from_pretrained keeps the UNet's to_k_ip/to_v_ip (and their scales), not only the
    face refiner and HiFi-Net: the reloaded pipeline equals the original."""
    pipe = make_pipe()
    pipe.set_id_scale(0.7)
    before = run(pipe, faces=faces, landmark_image=landmark_map)
    assert np.abs(before - run(pipe, faces=faces, landmark_image=landmark_map, id_scale=0.0)).max() > 1e-3
    pipe.save_pretrained(tmp_path / "pipe")
    with caplog.at_level("WARNING"):
        loaded = StableDiffusionXLHiFiPortraitPipeline.from_pretrained(tmp_path / "pipe")
    assert not [r for r in caplog.records if "were not used" in r.getMessage()]
    loaded.set_progress_bar_config(disable=True)
    procs = get_id_attn_processors(loaded.unet)
    assert len(procs) == 12 and all(p.scale == 0.7 for p in procs.values())
    np.testing.assert_allclose(run(loaded, faces=faces, landmark_image=landmark_map), before, atol=1e-5)
    # fp16 variant files too
    pipe.save_pretrained(tmp_path / "variant", variant="fp16")
    loaded = StableDiffusionXLHiFiPortraitPipeline.from_pretrained(tmp_path / "variant", variant="fp16")
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(run(loaded, faces=faces, landmark_image=landmark_map), before, atol=1e-5)


def test_attention_slicing_and_processor_resets_keep_the_id_attention(faces, landmark_map):
    from diffusers.models.attention_processor import AttnProcessor2_0

    from hifi_portrait.errors import AttentionProcessorError

    pipe = make_pipe()
    before = run(pipe, faces=faces, landmark_image=landmark_map)
    pipe.enable_attention_slicing(1)  # one (batch x head) row at a time
    procs = get_id_attn_processors(pipe.unet)
    assert len(procs) == 12 and all(p.slice_size == 1 for p in procs.values())
    sliced = run(pipe, faces=faces, landmark_image=landmark_map)
    np.testing.assert_allclose(sliced, before, atol=1e-5)
    assert np.abs(sliced - run(pipe, faces=faces, landmark_image=landmark_map, id_scale=0.0)).max() > 1e-3
    pipe.disable_attention_slicing()
    procs = get_id_attn_processors(pipe.unet)
    assert len(procs) == 12 and all(p.slice_size is None for p in procs.values())
    np.testing.assert_array_equal(run(pipe, faces=faces, landmark_image=landmark_map), before)
    # a reset straight on the UNet (which another pipeline may share): the pipeline composes the ID attention
    # back for each generation and leaves the UNet's processors as it found them
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    assert not get_id_attn_processors(pipe.unet)
    np.testing.assert_array_equal(run(pipe, faces=faces, landmark_image=landmark_map), before)
    assert not get_id_attn_processors(pipe.unet)
    pipe.unet.set_default_attn_processor()  # diffusers' reference processors (what its own tests use)
    np.testing.assert_allclose(run(pipe, faces=faces, landmark_image=landmark_map), before, atol=1e-6)

    # a processor it cannot be combined with is refused with a typed error naming it
    class CustomProcessor(AttnProcessor2_0):
        pass

    pipe.unet.set_attn_processor(CustomProcessor())
    with pytest.raises(AttentionProcessorError, match="CustomProcessor"):
        run(pipe, faces=faces, landmark_image=landmark_map)


def test_fp8_layerwise_casting_of_the_unet(faces, landmark_map):
    """unet.enable_layerwise_casting(float8 storage, bf16 compute) also stores the ID projections in fp8 and
    computes them in bf16 (the processor casts to the compute dtype, not the storage dtype)."""
    pipe = make_pipe()
    pipe.to(torch.bfloat16)
    bf16 = run(pipe, faces=faces, landmark_image=landmark_map)
    pipe.unet.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    proc = next(iter(get_id_attn_processors(pipe.unet).values()))
    assert proc.to_k_ip.weight.dtype == torch.float8_e4m3fn
    fp8 = run(pipe, faces=faces, landmark_image=landmark_map)
    no_id = run(pipe, faces=faces, landmark_image=landmark_map, id_scale=0.0)
    assert np.isfinite(fp8).all()
    quantisation = np.abs(fp8 - bf16).mean()  # measured 0.011 on these tiny models
    identity = np.abs(fp8 - no_id).mean()  # measured 0.057: the ID attention acts under fp8 too
    assert quantisation < 0.03 and identity > 3 * quantisation


def test_bit_parity_with_the_controlnet_parent_and_cfg_cutoff_callbacks(faces, landmark_map):
    """With our branches off, the pipeline with an extra ControlNet is diffusers' SDXL ControlNet pipeline, bit
    for bit, also under diffusers' CFG-cutoff callbacks (the loop re-reads do_classifier_free_guidance)."""
    from diffusers import StableDiffusionXLControlNetPipeline
    from diffusers.callbacks import SDXLCFGCutoffCallback, SDXLControlnetCFGCutoffCallback
    from PIL import Image

    components = get_dummy_components()
    controlnet = get_dummy_controlnet(components["unet"], seed=1)
    parent = StableDiffusionXLControlNetPipeline(**components, controlnet=controlnet, add_watermarker=False)
    parent.set_progress_bar_config(disable=True)
    ours = StableDiffusionXLHiFiPortraitPipeline(**components, controlnet=controlnet, add_watermarker=False)
    ours.set_progress_bar_config(disable=True)
    cond = Image.fromarray(landmark_map)

    def both(**kwargs):
        kwargs.update(
            image=cond, num_inference_steps=4, guidance_scale=30.0, negative_prompt="blurry"
        )  # tiny models: a visible CFG term
        return run(parent, **kwargs), run(ours, **kwargs)

    a, b = both()
    np.testing.assert_array_equal(b, a)
    a_cut, b_cut = both(callback_on_step_end=SDXLControlnetCFGCutoffCallback(cutoff_step_ratio=0.25))
    np.testing.assert_array_equal(b_cut, a_cut)
    assert np.abs(b_cut - b).max() > 1e-3  # the cutoff changed the result
    # the plain SDXL callback (no ControlNet image to halve) against diffusers' SDXL pipeline
    plain = StableDiffusionXLPipeline(**components, add_watermarker=False)
    plain.set_progress_bar_config(disable=True)
    no_cn = StableDiffusionXLHiFiPortraitPipeline(**components, add_watermarker=False)
    no_cn.set_progress_bar_config(disable=True)
    kwargs = {"num_inference_steps": 4, "height": 64, "width": 64, "guidance_scale": 30.0, "negative_prompt": "blurry"}
    a_cut = run(plain, callback_on_step_end=SDXLCFGCutoffCallback(cutoff_step_ratio=0.25), **kwargs)
    b_cut = run(no_cn, callback_on_step_end=SDXLCFGCutoffCallback(cutoff_step_ratio=0.25), **kwargs)
    np.testing.assert_array_equal(b_cut, a_cut)
    assert np.abs(b_cut - run(no_cn, **kwargs)).max() > 1e-3

    # with the adapter on, the cutoff callback equals turning guidance off alone (the loop halves its own tensors)
    pipe = make_pipe(controlnet=controlnet)
    kwargs = {"faces": faces, "landmark_image": landmark_map, "image": cond, "num_inference_steps": 4}
    kwargs["guidance_scale"] = 30.0

    def guidance_off(p, i, t, tensors):
        if i == 1:
            p._guidance_scale = 0.0
        return tensors

    cut = run(pipe, callback_on_step_end=SDXLControlnetCFGCutoffCallback(cutoff_step_ratio=0.25), **kwargs)
    np.testing.assert_array_equal(cut, run(pipe, callback_on_step_end=guidance_off, **kwargs))
    assert np.abs(cut - run(pipe, **kwargs)).max() > 1e-3
