"""`kvfleet model` commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("make-tiny")
def make_tiny(
    directory: Annotated[Path, typer.Argument(help="Where to write the checkpoint.")],
) -> None:
    """Create the seeded random-weight tiny-llama checkpoint (with a real tokenizer) offline."""
    from kvfleet.common.models.tiny import make_tiny_llama

    path = make_tiny_llama(directory)
    typer.echo(f"tiny-llama written to {path}")


@app.command("list")
def list_models() -> None:
    """Show the registered model names and where they resolve."""
    from kvfleet.common.models import REGISTERED, UnknownModelError, read_spec
    from kvfleet.common.models.cache_files import cache_dir
    from kvfleet.common.models.sources import smollm2_gguf_path

    for name in REGISTERED:
        try:
            if name == "tiny-llama":
                path = cache_dir() / "tiny-llama"
                where = f"{path} ({'present' if path.exists() else 'made on first use'})"
            else:
                path = smollm2_gguf_path()
                from kvfleet.common.models import resolve_model

                spec = read_spec(resolve_model(name))
                where = f"{path} ({spec.architecture}, {spec.num_layers} layers)"
        except UnknownModelError as e:
            where = f"unavailable: {e}"
        typer.echo(f"{name:14s} {where}")
