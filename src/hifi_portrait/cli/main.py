"""The ``hifi-portrait`` command. Each subcommand lives in its own module of this package and is registered here.

Exit codes (the same for every subcommand):
  0 success; 1 nothing usable / the job failed on the input; 2 bad command line or configuration;
  3 model files missing (the message says which files and where to get them).
"""

from __future__ import annotations

import importlib
import logging

import typer

app = typer.Typer(
    name="hifi-portrait",
    help="HiFi-Portrait: identity-preserving portraits from several reference photos, with pose/expression control.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    epilog=(
        "Examples:\n\n"
        "  hifi-portrait run tests/data/obama*.jpg --out results\n\n"
        "  hifi-portrait analyze refs/ --out results/analysis --drop-outliers\n\n"
        "  hifi-portrait landmarks refs/*.jpg --yaw 30 --expression smile:0.7 --size 832x1216 "
        "--out maps --sweep yaw\n\n"
        "  hifi-portrait generate refs/*.jpg --base sdxl-base --adapter hifi.safetensors --image-encoder clip-vit-h "
        "--prompt 'a portrait photo' --out portraits\n\n"
        "  hifi-portrait build-dataset photos/ --out dataset --config dataset.yaml\n\n"
        "  hifi-portrait train --config train.yaml --resume latest\n\n"
        "  hifi-portrait eval bench.yaml -g ours=generated/ours -g instantid=generated/instantid --out scores\n\n"
        "  hifi-portrait demo --port 7860\n\n"
        "Exit codes: 0 ok, 1 nothing usable / job failed, 2 bad option or config, 3 model files missing."
    ),
)

# (subcommand name, module under hifi_portrait.cli, function name)
SUBCOMMANDS = [
    ("run", "run", "run"),
    ("analyze", "analyze", "analyze"),
    ("landmarks", "landmarks", "landmarks"),
    ("generate", "generate", "generate"),
    ("build-dataset", "build_dataset", "build_dataset"),
    ("train", "train", "train"),
    ("eval", "evaluate", "evaluate"),
    ("demo", "demo", "demo"),
    ("convert-instantid", "convert", "convert_instantid"),
]


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug logging."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only show warnings and errors; no progress bars."),
) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if quiet:
        import os

        os.environ["TQDM_DISABLE"] = "1"


def _register() -> None:
    for name, module_name, func_name in SUBCOMMANDS:
        module = importlib.import_module(f"hifi_portrait.cli.{module_name}")
        app.command(name)(getattr(module, func_name))


_register()

if __name__ == "__main__":
    app()
