"""The ``kvfleet`` command. Each group lives in its own module; heavy imports stay inside
the commands so that ``kvfleet --help`` is instant."""

from __future__ import annotations

import typer

from kvfleet.cli import admin, bench, load, model, secrets_cmd, sim, stack

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
app.add_typer(secrets_cmd.app, name="secrets", help="Fresh credentials for a deployment.")


@app.command()
def policies() -> None:
    """The policy sets `kvfleet up --policy` and `kvfleet sim --policy` take."""
    from rich.console import Console
    from rich.table import Table

    from kvfleet.policies import POLICY_SETS

    table = Table("policy", "dispatch", "batch", "migration", "placement", "overload",
                  "description")
    for s in POLICY_SETS.values():
        table.add_row(s.name, s.dispatch().name, s.batch().name, s.migration().name,
                      s.placement().name, s.overload().name, s.description)
    Console(width=200).print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
