"""`kvfleet model` commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("make-tiny")
def make_tiny(
    directory: Annotated[Path, typer.Argument(help="Where to write the checkpoint.")],
    arch: Annotated[str, typer.Option(help="Shape: llama, qwen2 or mistral.")] = "llama",
) -> None:
    """Create a seeded random-weight tiny checkpoint (with a real tokenizer) offline."""
    from kvfleet.common.models.tiny import TINY_SHAPES
    from kvfleet.common.models.tiny import make_tiny as make

    if arch not in TINY_SHAPES:
        typer.echo(f"error: unknown --arch {arch!r}; known: {', '.join(TINY_SHAPES)}", err=True)
        raise typer.Exit(2)
    path = make(directory, arch)
    typer.echo(f"tiny-{arch} written to {path}")


@app.command("list")
def list_models() -> None:
    """Show the registered model names and where they resolve."""
    from kvfleet.common.models import REGISTERED, UnknownModelError, read_spec
    from kvfleet.common.models.cache_files import cache_dir
    from kvfleet.common.models.sources import smollm2_gguf_path

    for name in REGISTERED:
        try:
            if name.startswith("tiny-"):
                path = cache_dir() / name
                where = f"{path} ({'present' if path.exists() else 'made on first use'})"
            else:
                path = smollm2_gguf_path()
                from kvfleet.common.models import resolve_model

                spec = read_spec(resolve_model(name))
                where = f"{path} ({spec.architecture}, {spec.num_layers} layers)"
        except UnknownModelError as e:
            where = f"unavailable: {e}"
        typer.echo(f"{name:14s} {where}")
