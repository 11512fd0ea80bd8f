"""``hifi-portrait convert-instantid ip-adapter.bin --out ip-adapter.safetensors``: InstantID's pickle -> safetensors.

The pickle is read only with ``torch.load(path, map_location="cpu", weights_only=True)``: a file holding anything
but tensors and plain containers is refused, never unpickled. The output has namespaced keys (``image_proj.*``,
``ip_adapter.*``) and is what :func:`hifi_portrait.loaders.instantid.load_instantid` reads (docs/instantid.md).

Exit codes: 0 written; 1 refused or malformed checkpoint (the message names the keys); 2 bad option (output exists
without ``--overwrite``, not ``.safetensors``); 3 input file missing.
"""

from __future__ import annotations

from pathlib import Path

import typer

from hifi_portrait.cli.common import user_errors


def convert_instantid(
    checkpoint: Path = typer.Argument(..., help="InstantID's ip-adapter.bin (huggingface.co/InstantX/InstantID)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .safetensors file."),
    overwrite: bool = typer.Option(False, help="Replace an existing output file."),
    fp16: bool = typer.Option(False, "--fp16", help="Store the weights in float16 (half the size)."),
) -> None:
    """Convert InstantID's ip-adapter.bin (image projection + ID attention) to a safe .safetensors file."""
    with user_errors():
        import torch

        from hifi_portrait.loaders.instantid import convert_instantid_checkpoint, read_instantid_file

        dtype = torch.float16 if fp16 else None
        path = convert_instantid_checkpoint(checkpoint, out, overwrite=overwrite, dtype=dtype)
        config, proj, ip = read_instantid_file(path)
        typer.echo(
            f"wrote {path}: image projection ({len(proj)} tensors, {config['num_tokens']} tokens of "
            f"{config['output_dim']}-d from {config['id_embed_dim']}-d embeddings), {len(ip) // 2} ID attention layers"
        )
