"""The ``kvfleet`` command. Each group lives in its own module; heavy imports stay inside
the commands so that ``kvfleet --help`` is instant."""

from __future__ import annotations

import typer

from kvfleet.cli import admin, bench, load, model, sim, stack

app = typer.Typer(
    name="kvfleet",
    help="Serve several LLMs on a fleet of GPUs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

stack.register(app)
app.add_typer(model.app, name="model", help="Local model checkpoints.")
app.add_typer(bench.app, name="bench", help="Benchmarks against peers and baselines.")
app.add_typer(load.app, name="load", help="Load generator: trace replay and synthetic load.")
app.add_typer(sim.app, name="sim", help="Cluster simulator over kvfleet's policy cores.")
app.add_typer(admin.app, name="admin", help="Show and steer a running fleet.")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
