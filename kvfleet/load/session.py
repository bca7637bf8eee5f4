"""One load run end to end: workload -> prompts -> target check -> replay -> results."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kvfleet.load.client import LoadClient
from kvfleet.load.metrics import summarize
from kvfleet.load.options import LoadOptions, build_workload
from kvfleet.load.report import write_requests_csv, write_summary
from kvfleet.load.runner import RunResult, RunSettings, prepare, run_load
from kvfleet.load.slo import SloSet, parse_slos
from kvfleet.load.target import Target, parse_target
from kvfleet.load.tokens import PromptBuilder, TokenizerLike, load_tokenizer
from kvfleet.workload.stats import workload_stats

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunOutput:
    summary: dict[str, object]
    result: RunResult
    out_dir: Path | None


def make_client(
    target: Target, opts: LoadOptions, count_tokens: Callable[[str], int] | None = None
) -> LoadClient:
    if target.kind == "grpc":
        from kvfleet.load.grpc_client import GrpcClient

        return GrpcClient(target, request_timeout_s=opts.request_timeout_s)
    from kvfleet.load.http_client import HttpClient

    return HttpClient(
        target,
        opts.length_control,
        request_timeout_s=opts.request_timeout_s,
        count_tokens=count_tokens,
        send_slo=opts.send_slo,
    )


class Progress:
    """A rich progress bar: requests done out of the workload, failures, in flight."""

    def __init__(self, total: int, label: str, enabled: bool) -> None:
        self.enabled = enabled
        self.in_flight = self.failed = 0
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        self._p = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("in flight {task.fields[in_flight]}, failed {task.fields[failed]}"),
            TimeElapsedColumn(),
            transient=False,
        )
        self._task = self._p.add_task(label, total=total, in_flight=0, failed=0)

    def __enter__(self) -> Progress:
        if self.enabled:
            self._p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._p.stop()

    def started(self, _req: object) -> None:
        self.in_flight += 1
        self._update(0)

    def done(self, rec: object) -> None:
        self.in_flight -= 1
        self.failed += 0 if getattr(rec, "success", True) else 1
        self._update(1)

    def _update(self, advance: int) -> None:
        if self.enabled:
            self._p.update(
                self._task, advance=advance, in_flight=self.in_flight, failed=self.failed
            )


async def execute(
    opts: LoadOptions, progress: bool = True, check_timeout_s: float = 300.0
) -> RunOutput:
    """Run ``opts`` and write its results (when ``opts.out`` is set)."""
    target = parse_target(opts.target, allow_remote=opts.allow_remote)
    slos: SloSet = parse_slos(opts.slo)
    specs = build_workload(opts)
    if not specs:
        raise ValueError("the workload is empty (check --start/--duration/--rate)")
    models = sorted({s.model for s in specs})
    tokenizers: dict[str, TokenizerLike] = {}

    def tokenizer_of(model: str) -> TokenizerLike:
        if model not in tokenizers:
            tokenizers[model] = load_tokenizer(opts.tokenizer or model)
        return tokenizers[model]

    # The target is checked first, so an unreachable one fails fast, before prompts are built.
    count = (lambda text: len(tokenizer_of(models[0]).encode(text))) if len(models) == 1 else None
    client = make_client(target, opts, count)
    try:
        for model in models:
            await client.check(check_timeout_s, model)
        builders = {m: PromptBuilder(tokenizer_of(m), seed=opts.seed) for m in models}
        isolated = None
        if opts.isolation_probe:
            from kvfleet.load.isolation import probe

            isolated = await probe(client, builders, specs)
        prepared = prepare(specs, builders, slos if opts.send_slo else None)
        with Progress(len(prepared), opts.label or str(target), progress) as bar:
            result = await run_load(
                client,
                prepared,
                RunSettings(opts.max_concurrency, opts.drain_timeout_s),
                on_start=bar.started,
                on_done=bar.done,
            )
    finally:
        await client.close()
    if isolated is not None:
        from kvfleet.load.isolation import with_isolated

        result = RunResult(tuple(with_isolated(result.records, isolated)), result.duration_s)
    st = workload_stats(specs)
    options = opts.model_dump(mode="json")
    options.update(
        target_kind=target.kind,
        client=client.name,
        length_control=getattr(client, "length_control", "ignore_eos"),
        # output tokens: "usage" (the server's count), "tokenizer" (our re-count of its text)
        token_count_source=getattr(client, "token_count_source", {"token_ids": len(specs)}),
        workload={
            "num_requests": st.num_requests,
            "span_s": st.span_s,
            "mean_rate": st.mean_rate if st.span_s > 0 else None,
            "mean_input_tokens": st.mean_input_tokens,
            "mean_output_tokens": st.mean_output_tokens,
            "models": list(st.models),
        },
    )
    summary = summarize(result.records, result.duration_s, slos, options=options)
    summary["label"] = opts.label or str(target)
    if isolated is not None:
        summary["isolated_latency"] = {m: v.to_dict() for m, v in isolated.items()}
    if opts.out is not None:
        write_requests_csv(result.records, opts.out / "requests.csv", slos)
        write_summary(summary, opts.out / "summary.json")
        if opts.plots:
            from kvfleet.load.plots import plot_run

            plot_run(result.records, summary, opts.out)
    return RunOutput(summary, result, opts.out)


def run_sync(opts: LoadOptions, progress: bool = True) -> RunOutput:
    return asyncio.run(execute(opts, progress=progress))
