"""Helpers to build small engines and drive them to completion."""

from __future__ import annotations

from kvfleet.services.worker.engine import (
    Engine,
    EngineConfig,
    EngineRequest,
    SamplingParams,
    TokenEvent,
)

# One torch thread: on a small shared CI machine a second thread mostly waits at barriers.
TEST_THREADS = 1


def tiny_engine(
    memory_mb: int = 64,
    page_size_bytes: int = 4096,
    budget: int = 256,
    max_seqs: int = 16,
    load: bool = True,
    dtype: str = "float32",
    model_dtypes: dict[str, str] | None = None,
    compile: str = "off",
) -> Engine:
    eng = Engine(
        EngineConfig(
            memory_bytes=memory_mb << 20,
            page_size_bytes=page_size_bytes,
            max_num_batched_tokens=budget,
            max_num_seqs=max_seqs,
            num_threads=TEST_THREADS,
            dtype=dtype,
            model_dtypes=model_dtypes or {},
            compile=compile,
        )
    )
    if load:
        eng.load_model("tiny-llama")
    return eng


def greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=n, ignore_eos=True, **kw)


def run_all(eng: Engine, max_steps: int = 10_000) -> dict[str, list[TokenEvent]]:
    out: dict[str, list[TokenEvent]] = {}
    for _ in range(max_steps):
        if not eng.has_unfinished():
            return out
        for ev in eng.step():
            out.setdefault(ev.request_id, []).append(ev)
    raise AssertionError("engine did not finish")


def tokens(events: list[TokenEvent]) -> list[int]:
    return [e.token_id for e in events if e.token_id is not None]


def request(
    rid: str, prompt: list[int], sampling: SamplingParams, model: str = "tiny-llama", **kw
) -> EngineRequest:
    return EngineRequest(rid, model, tuple(prompt), sampling, **kw)
