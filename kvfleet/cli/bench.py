"""`kvfleet bench` commands: each benchmark registers itself from its own module."""

from __future__ import annotations

import typer

from kvfleet.cli import (
    bench_engine,
    bench_fidelity,
    bench_gateway,
    bench_kunserve,
    bench_kunserve_sim,
    bench_serve,
    bench_trust,
)

app = typer.Typer(no_args_is_help=True)
bench_engine.register(app)
bench_fidelity.register(app)
bench_gateway.register(app)
bench_kunserve.register(app)
bench_kunserve_sim.register(app)
bench_serve.register(app)
bench_trust.register(app)
