"""Helpers shared by the subcommands: error reporting with exit codes, output-path safety."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import typer

from hifi_portrait.errors import ConfigError, HiFiPortraitError, ModelFilesMissingError

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_MODEL_FILES = 3


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn our typed errors into a one-paragraph message and a documented exit code (no traceback)."""
    try:
        yield
    except ModelFilesMissingError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(EXIT_MODEL_FILES) from None
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except HiFiPortraitError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(EXIT_FAILED) from None


def safe_child(root: Path, name: str) -> Path:
    """``root / name`` for a file name derived from user input, refusing anything that would escape ``root``."""
    candidate = (root / Path(name).name).resolve()
    if root.resolve() not in candidate.parents:
        raise ConfigError(f"refusing to write {name!r} outside the output folder {root}")
    return candidate
