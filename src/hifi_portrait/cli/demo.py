"""``hifi-portrait demo``: the web demo (Gradio) on this machine."""

from __future__ import annotations

from pathlib import Path

import typer

from hifi_portrait.cli.common import user_errors


def demo(
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        help="Address to bind. The default serves only this machine; 0.0.0.0 exposes the demo to your network.",
    ),
    port: int = typer.Option(7860, "--port", min=1, max=65535, help="TCP port."),
    base: Path | None = typer.Option(None, "--base", help="SDXL base model folder (diffusers layout)."),
    adapter: Path | None = typer.Option(None, "--adapter", help="hifi-portrait adapter .safetensors file."),
    image_encoder: Path | None = typer.Option(
        None, "--image-encoder", help="CLIP vision encoder folder (default: BASE/image_encoder)."
    ),
    device: str = typer.Option("cpu", "--device", help="Torch device for generation, e.g. cuda, cuda:1, cpu."),
    max_upload_mb: float = typer.Option(10.0, "--max-upload-mb", min=0.1, help="Largest accepted upload, in MB."),
    max_queue: int = typer.Option(16, "--max-queue", min=1, help="Requests waiting beyond this get 'queue full'."),
    max_references: int = typer.Option(8, "--max-references", min=1, help="Reference photos used per request."),
) -> None:
    """Start the web demo: upload reference photos, check them, set pose/expression, preview, generate.

    Generation is enabled when --base, --adapter (and a CLIP vision encoder) are given; without them the page
    still analyses photos and previews landmark maps, and says which files are missing.

    Examples:

      hifi-portrait demo

      hifi-portrait demo --port 8080 --base ~/models/sdxl-base --adapter hifi_portrait.safetensors --device cuda
    """
    from hifi_portrait.demo import WeightsConfig, build_demo, launch_demo

    with user_errors():
        weights = WeightsConfig(base=base, adapter=adapter, image_encoder=image_encoder)
        app = build_demo(
            weights=weights,
            device=device,
            max_upload_mb=max_upload_mb,
            max_queue=max_queue,
            max_references=max_references,
        )
        if host not in ("127.0.0.1", "localhost", "::1"):
            typer.secho(f"warning: binding {host}: the demo is reachable from other machines", fg="yellow", err=True)
        typer.echo(f"hifi-portrait demo on http://{'[' + host + ']' if ':' in host else host}:{port}/ (Ctrl+C stops)")
        launch_demo(app, host=host, port=port, block=True)
