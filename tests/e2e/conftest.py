"""One stack for every e2e test: Redis, planner, scheduler, two workers and the gateway as
processes (started once per session), and an in-process engine as the greedy reference."""

import asyncio
import itertools
import time
from dataclasses import dataclass

import pytest

from kvfleet.common.config import (
    EngineSettings,
    FleetConfig,
    ModelConfig,
    SloConfig,
    WorkerConfig,
)
from kvfleet.common.launcher import Stack, launch

TINY = "tiny-llama"
SMOL = "smollm2-135m"
API_KEY = "sk-e2e"
TINY_SLO = SloConfig(ttft_s=30.0, tpot_s=5.0, priority="low")  # the fleet's default for TINY


@dataclass(frozen=True)
class Reference:
    token_ids: tuple[int, ...]
    text: str
    finish_reason: str


class GreedyReference:
    """The engine alone: what the stack must reproduce token for token."""

    def __init__(self) -> None:
        from kvfleet.common.models import load_tokenizer
        from kvfleet.services.worker.engine import Engine, EngineConfig

        self.engine = Engine(EngineConfig(memory_bytes=300_000_000, num_threads=1))
        self.engine.load_model(TINY)  # also makes the checkpoint, before the workers need it
        self.tokenizer = load_tokenizer(TINY)
        self._ids = itertools.count()

    def run(self, prompt_ids, max_tokens: int, ignore_eos: bool = False) -> Reference:
        from kvfleet.services.worker.engine import EngineRequest, SamplingParams

        rid = f"ref-{next(self._ids)}"
        self.engine.add_request(
            EngineRequest(
                rid,
                TINY,
                tuple(prompt_ids),
                SamplingParams(max_tokens=max_tokens, ignore_eos=ignore_eos),
            )
        )
        ids: list[int] = []
        text: list[str] = []
        finish = ""
        while self.engine.has_unfinished():
            for ev in self.engine.step():
                if ev.token_id is not None:
                    ids.append(ev.token_id)
                text.append(ev.text)
                finish = ev.finish_reason or finish
        return Reference(tuple(ids), "".join(text), finish)

    def run_batch(self, requests) -> list[Reference]:
        """Several requests, ``(prompt_ids, SamplingParams)`` each, run together (a seeded
        sampled request's tokens depend only on its seed and logits, not on its batch)."""
        from kvfleet.services.worker.engine import EngineRequest

        rids = [f"ref-{next(self._ids)}" for _ in requests]
        for rid, (ids, params) in zip(rids, requests, strict=True):
            self.engine.add_request(EngineRequest(rid, TINY, tuple(ids), params))
        ids_of: dict[str, list[int]] = {r: [] for r in rids}
        text_of: dict[str, list[str]] = {r: [] for r in rids}
        finish_of: dict[str, str] = dict.fromkeys(rids, "")
        while self.engine.has_unfinished():
            for ev in self.engine.step():
                if ev.token_id is not None:
                    ids_of[ev.request_id].append(ev.token_id)
                text_of[ev.request_id].append(ev.text)
                finish_of[ev.request_id] = ev.finish_reason or finish_of[ev.request_id]
        return [Reference(tuple(ids_of[r]), "".join(text_of[r]), finish_of[r]) for r in rids]

    def chat_ids(self, messages) -> list[int]:
        return list(self.tokenizer.apply_chat_template(messages))


@pytest.fixture(scope="session")
def reference() -> GreedyReference:
    return GreedyReference()


@pytest.fixture(scope="session")
def stack(reference, tmp_path_factory) -> Stack:
    fleet = FleetConfig(
        models=[ModelConfig(name=TINY, slo=TINY_SLO), ModelConfig(name=SMOL)],
        workers=[
            WorkerConfig(id="w0", memory_bytes=1_500_000_000, models=[TINY, SMOL]),
            WorkerConfig(id="w1", memory_bytes=400_000_000, models=[TINY]),
        ],
        http_port=0,
        grpc_port=0,
        api_keys=[API_KEY],
        engine=EngineSettings(max_num_seqs=32, num_threads=1),
        worker={"heartbeat_ttl_s": 1.5, "heartbeat_s": 0.2},
        scheduler={"reclaim_idle_s": 1.0},
    )
    t0 = time.monotonic()
    s = launch(fleet, tmp_path_factory.mktemp("stack"), timeout_s=600)
    s.start_s = time.monotonic() - t0  # type: ignore[attr-defined]
    yield s
    s.stop()


async def until(pred, timeout_s: float = 60.0, interval_s: float = 0.02):
    """Poll an async predicate until it returns a truthy value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await pred()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(interval_s)
