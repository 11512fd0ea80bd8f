"""Generators of hostile adapter files for the bad-input corpus (tests/hostile/test_adapters.py).

Every case is made at test time from one good tiny adapter (written by ``save_hifi_portrait`` on the tiny random
pipeline of ``hifi_portrait.utils.testing``) or from nothing: no stored files. A case is ``(id, make, expect)``:
``make(folder, good)`` writes the file and returns its path; ``expect`` is ``(error class, pattern)`` (the load must
raise that typed error, its message matching ``pattern``) or ``("ok", parts)`` (the load must succeed and return
these parts).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from hifi_portrait.errors import AdapterFormatError, ModelFilesMissingError, WeightsMismatchError

LAYER = "down_blocks.1.attentions.0.transformer_blocks.0.attn2"
ALL_PARTS = ["face_refiner", "hifi_net", "ip_attn"]


@dataclass
class Good:
    """The good adapter the cases are made from: its bytes, tensors and metadata."""

    data: bytes
    tensors: dict[str, torch.Tensor]
    meta: dict[str, str]

    def config(self, part: str) -> dict[str, Any]:
        return json.loads(self.meta[f"{part}_config"])


Edit = Callable[[dict[str, torch.Tensor], dict[str, str], Good], None]


def _save(name: str, edit: Edit) -> Callable[[Path, Good], Path]:
    """A case that rewrites the good adapter after ``edit(tensors, meta, good)`` changed copies of them."""

    def make(folder: Path, good: Good) -> Path:
        tensors, meta = dict(good.tensors), dict(good.meta)
        edit(tensors, meta, good)
        path = folder / name
        save_file(tensors, str(path), metadata=meta)
        return path

    return make


def _bytes(name: str, data: Callable[[Good], bytes]) -> Callable[[Path, Good], Path]:
    def make(folder: Path, good: Good) -> Path:
        path = folder / name
        path.write_bytes(data(good))
        return path

    return make


def meta(key: str, value: str | None) -> Edit:
    """Set (or delete, with None) one metadata string."""

    def edit(tensors, meta, good):
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value

    return edit


def config(part: str, change: Callable[[dict], Any]) -> Edit:
    """Replace ``<part>_config`` with ``change(config)`` (or the config changed in place when it returns None),
    written with ``json.dumps`` (which writes NaN / Infinity as such)."""

    def edit(tensors, meta, good):
        cfg = good.config(part)
        out = change(cfg)
        meta[f"{part}_config"] = json.dumps(cfg if out is None else out)

    return edit


def setting(part: str, key: str, value: Any) -> Edit:
    return config(part, lambda cfg: cfg.__setitem__(key, value))


def dropping(part: str, key: str) -> Edit:
    return config(part, lambda cfg: cfg.pop(key) and None)


def layer_entry(value: Any, name: str = LAYER) -> Edit:
    return config("ip_attn", lambda cfg: cfg["layers"].__setitem__(name, value))


def rename_layer(new: str, old: str = LAYER) -> Edit:
    """Move one ID attention layer (its config entry and both tensors) to another name."""

    def edit(tensors, meta, good):
        cfg = good.config("ip_attn")
        cfg["layers"][new] = cfg["layers"].pop(old)
        meta["ip_attn_config"] = json.dumps(cfg)
        for kv in ("k", "v"):
            tensors[f"ip_attn.{new}.to_{kv}_ip.weight"] = tensors.pop(f"ip_attn.{old}.to_{kv}_ip.weight")

    return edit


def tensor(key: str, change: Callable[[torch.Tensor], torch.Tensor | None]) -> Edit:
    """Replace (or delete, when ``change`` returns None) one tensor."""

    def edit(tensors, meta, good):
        new = change(tensors[key])
        if new is None:
            del tensors[key]
        else:
            tensors[key] = new

    return edit


def only_parts(*parts: str) -> Edit:
    """Keep only these parts (tensors, configs and ``parts``)."""

    def edit(tensors, meta, good):
        for key in list(tensors):
            if key.split(".")[0] not in parts:
                del tensors[key]
        for part in ALL_PARTS:
            if part not in parts:
                meta.pop(f"{part}_config")
        meta["parts"] = json.dumps(list(parts))

    return edit


def both(*edits: Edit) -> Edit:
    def edit(tensors, meta, good):
        for e in edits:
            e(tensors, meta, good)

    return edit


def ip_dims(hidden: int, cross: int) -> Edit:
    """Every ID attention layer declared and stored as ``hidden x cross`` (consistent file, wrong for the UNet)."""

    def edit(tensors, meta, good):
        cfg = good.config("ip_attn")
        cfg["layers"] = {name: [hidden, cross] for name in cfg["layers"]}
        meta["ip_attn_config"] = json.dumps(cfg)
        for key in [k for k in tensors if k.startswith("ip_attn.")]:
            tensors[key] = torch.zeros(hidden, cross)

    return edit


def many_layers(count: int) -> Edit:
    return config("ip_attn", lambda cfg: cfg.__setitem__("layers", {f"x{i}.attn2": [64, 64] for i in range(count)}))


def header_claiming(length: int) -> Callable[[Good], bytes]:
    """A safetensors file whose 8-byte header length claims ``length`` bytes."""
    return lambda good: struct.pack("<Q", length) + good.data[8:64]


def header_json(text: bytes) -> Callable[[Good], bytes]:
    return lambda good: struct.pack("<Q", len(text)) + text


def _fifo(folder: Path, good: Good) -> Path:
    path = folder / "pipe.safetensors"
    os.mkfifo(path)
    return path


def _dangling(folder: Path, good: Good) -> Path:
    path = folder / "dangling.safetensors"
    path.symlink_to(folder / "gone.safetensors")
    return path


def _loop(folder: Path, good: Good) -> Path:
    path = folder / "loop.safetensors"
    path.symlink_to(path.name)
    return path


def _folder(folder: Path, good: Good) -> Path:
    path = folder / "dir.safetensors"
    path.mkdir()
    return path


def _pickle(good: Good) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(good.tensors, buf)
    return buf.getvalue()


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


F, H, I = "face_refiner", "hifi_net", "ip_attn"
NOT_READABLE = "not a readable .safetensors"


def adapter_cases() -> list[tuple[str, Callable, tuple]]:
    """The corpus of adapter files for ``load_hifi_portrait``; see the module docstring."""
    A, W = AdapterFormatError, WeightsMismatchError
    files = [
        ("empty-file", _bytes("empty.safetensors", lambda g: b""), A, NOT_READABLE),
        ("random-bytes", _bytes("noise.safetensors", lambda g: os.urandom(4096)), A, NOT_READABLE),
        ("text-file", _bytes("notes.safetensors", lambda g: b"not weights\n" * 50), A, NOT_READABLE),
        ("truncated-half", _bytes("half.safetensors", lambda g: g.data[: len(g.data) // 2]), A, NOT_READABLE),
        ("truncated-in-header", _bytes("head.safetensors", lambda g: g.data[:40]), A, NOT_READABLE),
        ("trailing-garbage", _bytes("tail.safetensors", lambda g: g.data + b"\0" * 64), A, NOT_READABLE),
        ("header-claims-2^60-bytes", _bytes("claim.safetensors", header_claiming(1 << 60)), A, NOT_READABLE),
        ("header-not-json", _bytes("hdr.safetensors", header_json(b"{not json")), A, NOT_READABLE),
        (
            "header-metadata-not-strings",
            _bytes("m.safetensors", header_json(b'{"__metadata__": {"a": 1}}')),
            A,
            NOT_READABLE,
        ),
        ("torch-pickle-named-safetensors", _bytes("pickle.safetensors", _pickle), A, NOT_READABLE),
        ("folder", _folder, A, "is a folder"),
        ("fifo", _fifo, A, "not a regular file"),
        ("dangling-link", _dangling, ModelFilesMissingError, "symbolic link to a missing file"),
        ("link-loop", _loop, ModelFilesMissingError, "link loop"),
        ("missing", lambda folder, good: folder / "nope.safetensors", ModelFilesMissingError, "not found"),
    ]
    metadata = [
        ("format-missing", _save("f0.safetensors", meta("format", None)), A, "not a hifi-portrait adapter"),
        ("format-lora", _save("f1.safetensors", meta("format", "lora")), A, "'format' is 'lora'"),
        ("format-version-2", _save("v2.safetensors", meta("format_version", "2")), A, "format_version '2'"),
        ("format-version-missing", _save("v0.safetensors", meta("format_version", None)), A, "format_version None"),
        ("parts-missing", _save("p0.safetensors", meta("parts", None)), A, "no 'parts'"),
        (
            "parts-not-json",
            _save("p1.safetensors", meta("parts", "face_refiner,hifi_net")),
            A,
            "'parts' is not valid JSON",
        ),
        ("parts-a-string", _save("p2.safetensors", meta("parts", '"face_refiner"')), A, "'parts' must be a non-empty"),
        ("parts-an-object", _save("p3.safetensors", meta("parts", '{"face_refiner": 1}')), A, "'parts' must be"),
        ("parts-empty", _save("p4.safetensors", meta("parts", "[]")), A, "'parts' must be a non-empty"),
        ("parts-unknown", _save("p5.safetensors", meta("parts", '["face_refiner", "lora"]')), A, "unknown parts"),
        ("parts-number", _save("p6.safetensors", meta("parts", "[1]")), A, "unknown parts"),
        ("parts-twice", _save("p7.safetensors", meta("parts", json.dumps(ALL_PARTS + [I]))), A, "twice"),
        ("parts-nested-100000", _save("p8.safetensors", meta("parts", _deep(100_000))), A, "nested more than"),
        (
            "config-2-million-characters",
            _save("big.safetensors", meta("ip_attn_config", '{"num_tokens": 4' + " " * 2_000_000 + "}")),
            A,
            "2000017 characters long, more than the 1048576",
        ),
        ("part-without-config", _save("c0.safetensors", meta("hifi_net_config", None)), A, "no 'hifi_net_config'"),
        (
            "config-of-undeclared-part",
            _save("c1.safetensors", both(only_parts(H, I), meta("face_refiner_config", "{}"))),
            A,
            "does not list that part",
        ),
        (
            "config-not-json",
            _save("c2.safetensors", meta("face_refiner_config", "{num_tokens: 4")),
            A,
            "not valid JSON",
        ),
        (
            "config-duplicate-key",
            _save("c3.safetensors", meta("face_refiner_config", '{"num_tokens": 4, "num_tokens": 9}')),
            A,
            "duplicate key",
        ),
        (
            "config-string-local-path",
            _save("s0.safetensors", config(F, lambda c: str(Path.cwd()))),
            A,
            "JSON string.*path or a Hub id",
        ),
        (
            "config-string-hub-id",
            _save("s1.safetensors", config(F, lambda c: "stabilityai/stable-diffusion-xl-base-1.0")),
            A,
            "JSON string",
        ),
        (
            "hifi-config-string",
            _save("s2.safetensors", config(H, lambda c: "hifi_net/")),
            A,
            "hifi_net_config' is a JSON string",
        ),
        (
            "ip-config-string",
            _save("s3.safetensors", config(I, lambda c: "ip.json")),
            A,
            "ip_attn_config' is a JSON string",
        ),
        ("config-a-list", _save("s4.safetensors", config(F, lambda c: [1, 2])), A, "must be a JSON object"),
        ("config-null", _save("s5.safetensors", meta("face_refiner_config", "null")), A, "must be a JSON object"),
        (
            "extra-top-level-metadata",
            _save("ok_extra.safetensors", both(meta("step", "10"), meta("evil", "x" * 5000))),
            "ok",
            ALL_PARTS,
        ),
    ]
    fields = [
        (
            "num_layers-two",
            _save("n0.safetensors", setting(F, "num_layers", "two")),
            A,
            r"face_refiner_config\.num_layers must be an integer",
        ),
        (
            "num_tokens-abc",
            _save("n1.safetensors", setting(F, "num_tokens", "abc")),
            A,
            r"num_tokens must be an integer",
        ),
        (
            "num_tokens-2e9-float",
            _save("n2.safetensors", setting(F, "num_tokens", 2e9)),
            A,
            r"num_tokens must be an integer",
        ),
        (
            "num_tokens-2e9-int",
            _save("n3.safetensors", setting(F, "num_tokens", 2_000_000_000)),
            A,
            r"num_tokens must be between 1 and 1024",
        ),
        (
            "num_layers-200000",
            _save("n4.safetensors", setting(F, "num_layers", 200_000)),
            A,
            r"num_layers must be between 1 and 64",
        ),
        (
            "hidden_dim-negative",
            _save("n5.safetensors", setting(F, "hidden_dim", -5)),
            A,
            r"hidden_dim must be between",
        ),
        ("hidden_dim-zero", _save("n6.safetensors", setting(F, "hidden_dim", 0)), A, r"hidden_dim must be between"),
        ("num_heads-bool", _save("n7.safetensors", setting(F, "num_heads", True)), A, r"num_heads must be an integer"),
        (
            "quality_eps-NaN",
            _save("n8.safetensors", setting(F, "quality_eps", float("nan"))),
            A,
            "NaN is not a number JSON allows",
        ),
        (
            "quality_eps-Infinity",
            _save("n9.safetensors", setting(F, "quality_eps", float("inf"))),
            A,
            "Infinity is not",
        ),
        (
            "hidden_dim-1e400",
            _save("na.safetensors", meta("face_refiner_config", '{"hidden_dim": 1e400}')),
            A,
            "hidden_dim must be an integer",
        ),
        (
            "num_tokens-5000-digits",
            _save("nb.safetensors", meta("face_refiner_config", '{"num_tokens": ' + "9" * 5000 + "}")),
            A,
            "not valid JSON",
        ),
        (
            "unknown-config-key",
            _save("nc.safetensors", setting(F, "num_layer", 2)),
            A,
            r"unknown keys: num_layer \(did you mean 'num_layers'",
        ),
        (
            "class-name-of-another-model",
            _save("nd.safetensors", setting(F, "_class_name", "HiFiNetModel")),
            A,
            "_class_name is 'HiFiNetModel'",
        ),
        (
            "heads-do-not-divide-width",
            _save("ne.safetensors", setting(F, "num_heads", 5)),
            A,
            "cannot build a FaceRefiner.*divisible",
        ),
        (
            "config-size-not-the-files",
            _save("nf.safetensors", setting(F, "hidden_dim", 64)),
            W,
            r"wrong shapes: face_refiner\.",
        ),
        (
            "block_out_channels-string",
            _save("h0.safetensors", setting(H, "block_out_channels", "32,64")),
            A,
            r"block_out_channels must be a list of integers",
        ),
        (
            "block_out_channels-100-levels",
            _save("h1.safetensors", setting(H, "block_out_channels", [32] * 100)),
            A,
            r"block_out_channels must have 1 to 8 entries",
        ),
        (
            "vae_scale_factor-3",
            _save("h2.safetensors", setting(H, "vae_scale_factor", 3)),
            A,
            "cannot build a HiFiNetModel.*power of 2",
        ),
        (
            "attention_levels-wrong-length",
            _save("h3.safetensors", setting(H, "attention_levels", [True])),
            A,
            "cannot build a HiFiNetModel",
        ),
        ("size_ratio-zero", _save("h4.safetensors", setting(H, "size_ratio", 0)), A, r"size_ratio must be in \(0"),
        (
            "addition_embed_type-unknown",
            _save("h5.safetensors", setting(H, "addition_embed_type", "image")),
            A,
            "must be one of 'text_time', None",
        ),
        (
            "branch_layers-200000",
            _save("h6.safetensors", setting(H, "branch_layers_per_block", 200_000)),
            A,
            "branch_layers_per_block must be between 1 and 16",
        ),
        (
            "attention_levels-ints",
            _save("h7.safetensors", setting(H, "attention_levels", [0, 1])),
            A,
            "entry 0 must be true or false",
        ),
        ("ip-missing-layers", _save("i0.safetensors", dropping(I, "layers")), A, "lacks the required keys: layers"),
        (
            "ip-missing-num_tokens",
            _save("i1.safetensors", dropping(I, "num_tokens")),
            A,
            "lacks the required keys: num_tokens",
        ),
        (
            "ip-num_tokens-abc",
            _save("i2.safetensors", setting(I, "num_tokens", "abc")),
            A,
            r"ip_attn_config\.num_tokens must be an integer",
        ),
        (
            "ip-num_tokens-2e9",
            _save("i3.safetensors", setting(I, "num_tokens", 2e9)),
            A,
            r"ip_attn_config\.num_tokens must be an integer",
        ),
        (
            "ip-num_tokens-2000000000",
            _save("i4.safetensors", setting(I, "num_tokens", 2_000_000_000)),
            A,
            "between 1 and 1024",
        ),
        ("ip-scale-string", _save("i5.safetensors", setting(I, "scale", "high")), A, r"scale must be a finite number"),
        ("ip-scale-NaN", _save("i6.safetensors", setting(I, "scale", float("nan"))), A, "NaN"),
        ("ip-extra-key", _save("i7.safetensors", setting(I, "layers_extra", {})), A, "unknown keys: layers_extra"),
        (
            "ip-layers-a-list",
            _save("i8.safetensors", setting(I, "layers", [LAYER])),
            A,
            "layers must be a non-empty JSON object",
        ),
        (
            "ip-layers-empty",
            _save("i9.safetensors", setting(I, "layers", {})),
            A,
            "layers must be a non-empty JSON object",
        ),
        (
            "layer-entry-[64]",
            _save("l0.safetensors", layer_entry([64])),
            A,
            r"must be \[hidden_size, cross_attention_dim\], got \[64\]",
        ),
        ("layer-entry-string-dim", _save("l1.safetensors", layer_entry([64, "64"])), A, r"must be \[hidden_size"),
        ("layer-entry-three-dims", _save("l2.safetensors", layer_entry([64, 64, 64])), A, r"must be \[hidden_size"),
        ("layer-entry-bool", _save("l3.safetensors", layer_entry([True, 64])), A, r"must be \[hidden_size"),
        (
            "layer-entry-huge",
            _save("l4.safetensors", layer_entry([64, 100_000])),
            A,
            "sizes must be between 1 and 8192",
        ),
        ("layer-entry-a-number", _save("l5.safetensors", layer_entry(64)), A, r"must be \[hidden_size"),
        ("layer-name-empty", _save("l6.safetensors", rename_layer("")), A, "empty layer name"),
        (
            "layer-name-conv_in",
            _save("l7.safetensors", rename_layer("conv_in")),
            A,
            "'conv_in'.*not a text cross-attention",
        ),
        (
            "layer-self-attention-attn1",
            _save("l8.safetensors", rename_layer(LAYER[:-1] + "1")),
            A,
            r"attn1'.*not a text cross-attention",
        ),
        (
            "layer-name-traversal",
            _save("l9.safetensors", rename_layer("../../etc/passwd.attn2")),
            A,
            "malformed layer name",
        ),
        (
            "layer-not-in-this-unet",
            _save("la.safetensors", rename_layer("up_blocks.9.attentions.0.attn2")),
            W,
            r"layers this UNet does not have: ip_attn\.up_blocks\.9",
        ),
        ("layers-5000", _save("lb.safetensors", many_layers(5000)), A, "5000 layers, more than 1024"),
        (
            "layer-dims-not-the-unets",
            _save("lc.safetensors", ip_dims(32, 64)),
            W,
            r"is 32x64, the UNet layer is 64x64",
        ),
        (
            "ip-tokens-not-the-refiners",
            _save("ld.safetensors", setting(I, "num_tokens", 8)),
            W,
            "makes 4 ID tokens but the ID attention .* expects 8",
        ),
    ]
    tensors = [
        (
            "int8-tensor",
            _save("t0.safetensors", tensor("face_refiner.latents", lambda t: t.to(torch.int8))),
            A,
            r"face_refiner\.latents is I8",
        ),
        ("bool-tensor", _save("t1.safetensors", tensor("hifi_net.conv_in.weight", lambda t: t > 0)), A, "is BOOL"),
        (
            "float64-tensor",
            _save("t2.safetensors", tensor(f"ip_attn.{LAYER}.to_k_ip.weight", lambda t: t.double())),
            A,
            "is F64",
        ),
        ("int64-tensor", _save("t3.safetensors", tensor("face_refiner.latents", lambda t: t.long())), A, "is I64"),
        (
            "uint8-tensor",
            _save("t4.safetensors", tensor("face_refiner.latents", lambda t: t.to(torch.uint8))),
            A,
            "is U8",
        ),
        (
            "float8-tensor",
            _save("t5.safetensors", tensor("face_refiner.latents", lambda t: t.to(torch.float8_e4m3fn))),
            A,
            "is F8_E4M3",
        ),
        (
            "wrong-shape",
            _save("t6.safetensors", tensor("hifi_net.conv_in.weight", lambda t: torch.zeros(3, 4, 3, 3))),
            W,
            r"wrong shapes: hifi_net\.conv_in\.weight",
        ),
        (
            "transposed-ip",
            _save("t7.safetensors", tensor(f"ip_attn.{LAYER}.to_v_ip.weight", lambda t: torch.zeros(64, 32))),
            W,
            "wrong shapes: ip_attn",
        ),
        (
            "zero-size-tensor",
            _save("t8.safetensors", tensor("face_refiner.latents", lambda t: torch.zeros(0, 32))),
            W,
            r"wrong shapes: face_refiner\.latents",
        ),
        (
            "missing-tensor",
            _save("t9.safetensors", tensor("face_refiner.latents", lambda t: None)),
            W,
            r"missing keys: face_refiner\.latents",
        ),
        (
            "extra-tensor-in-part",
            _save("ta.safetensors", meta_free_tensor("face_refiner.extra")),
            W,
            r"unexpected keys: face_refiner\.extra",
        ),
        (
            "stray-namespace",
            _save("tb.safetensors", meta_free_tensor("lora.up.weight")),
            W,
            r"outside the declared parts.*lora\.up\.weight",
        ),
        (
            "key-without-name",
            _save("tc.safetensors", meta_free_tensor("face_refiner.")),
            W,
            "outside the declared parts",
        ),
    ]
    fits = [
        (
            "refiner-for-another-unet",
            foreign_refiner("fr_out.safetensors", output_dim=32),
            W,
            "makes 32-d ID tokens, the UNet's cross_attention_dim is 64",
        ),
        (
            "refiner-for-another-image-encoder",
            foreign_refiner("fr_patch.safetensors", patch_dim=48),
            W,
            "reads 48-d patch tokens, the pipeline's image encoder gives 32-d ones",
        ),
        (
            "refiner-with-too-few-patches",
            foreign_refiner("fr_npatch.safetensors", num_patches=5),
            W,
            "knows 5 patch tokens per reference, the pipeline's image encoder gives 17",
        ),
        (
            "hifi-net-for-another-unet",
            _foreign_hifi_net,
            W,
            "hifi_net in .* was built for another UNet: layers_per_block 1",
        ),
    ]
    oks = [
        ("only-ip-attn", _save("ok_ip.safetensors", only_parts(I)), "ok", [I]),
        ("only-face-refiner", _save("ok_fr.safetensors", only_parts(F)), "ok", [F]),
        ("float16-weights", _save("ok_f16.safetensors", all_tensors(torch.float16)), "ok", ALL_PARTS),
        ("bfloat16-weights", _save("ok_bf16.safetensors", all_tensors(torch.bfloat16)), "ok", ALL_PARTS),
        (
            "config-defaults-left-out",
            _save("ok_defaults.safetensors", both(dropping(F, "quality_eps"), dropping(F, "_diffusers_version"))),
            "ok",
            ALL_PARTS,
        ),
    ]
    cases = files + metadata + fields + tensors + fits + oks
    return [(name, make, (kind, what)) for name, make, kind, what in cases]


def meta_free_tensor(key: str) -> Edit:
    """Add a tensor ``key`` that no config declares."""
    return tensor_add(key, torch.zeros(2))


def tensor_add(key: str, value: torch.Tensor) -> Edit:
    def edit(tensors, meta, good):
        tensors[key] = value

    return edit


def all_tensors(dtype: torch.dtype) -> Edit:
    def edit(tensors, meta, good):
        for key in tensors:
            tensors[key] = tensors[key].to(dtype)

    return edit


def foreign_refiner(name: str, **changes: int) -> Callable[[Path, Good], Path]:
    """A consistent adapter with only a face refiner, of the good one's sizes but ``changes``."""

    def make(folder: Path, good: Good) -> Path:
        from hifi_portrait.loaders import write_adapter_file
        from hifi_portrait.models import FaceRefiner

        cfg = {k: v for k, v in good.config("face_refiner").items() if not k.startswith("_")}
        cfg.update(num_layers=1, **changes)
        return write_adapter_file(folder / name, face_refiner=FaceRefiner(**cfg))

    return make


def _foreign_hifi_net(folder: Path, good: Good) -> Path:
    """A consistent adapter whose HiFi-Net was made for a UNet with one resnet per level (the tiny UNet has 2)."""
    from hifi_portrait.loaders import write_adapter_file
    from hifi_portrait.models import HiFiNetModel

    cfg = {k: v for k, v in good.config("hifi_net").items() if not k.startswith("_")}
    cfg["layers_per_block"] = 1
    return write_adapter_file(folder / "foreign_hn.safetensors", hifi_net=HiFiNetModel(**cfg))
