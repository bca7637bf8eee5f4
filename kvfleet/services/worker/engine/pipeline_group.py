"""A model served by a pipeline group of engines on different workers.

The first stage (the leader) owns the group's requests. It keeps one micro-batch in flight
per stage (a *lane*): while stage k runs one lane's micro-batch, stage k-1 runs the next
one's, so every stage stays busy (KunServe's look-ahead batches). Each lane is planned by the
batch policy over the requests not in flight, with the free pages of the tightest stage
(every request takes the same number of pages on every stage: the group shares one
tokens-per-page) and a share of the step's token budget (``lane_limits``). The leader sends
the micro-batch's header (what changed since the last one: requests admitted and finished,
tokens appended, preemptions, the chunks) with its hidden states; every other stage applies
the header to its own pages in the same order, runs its layers and passes the result on. The
last stage samples (with each request's seed, as one engine would) and returns the tokens;
the leader collects a lane's tokens when the lane comes round again, appends them, checks
stop conditions and emits the events. The other stages hold *shadow* sequences: pages,
computed counts and tokens, no events.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from kvfleet.common.sampling import SamplingParams
from kvfleet.common.slo import ServiceLevel
from kvfleet.services.scheduler.core.stages import StageView
from kvfleet.services.worker.core.batch_policy import Chunk, StepPlan
from kvfleet.services.worker.core.pipeline_policy import lane_limits
from kvfleet.services.worker.engine.batch_builder import build_batch
from kvfleet.services.worker.engine.sampler import sample
from kvfleet.services.worker.engine.sequence import Sequence
from kvfleet.services.worker.engine.stage_link import SendHandle, StageLink
from kvfleet.services.worker.engine.types import EngineInputError, EngineRequest, TokenEvent

log = logging.getLogger(__name__)

STEP = "step"
DISSOLVE = "dissolve"
STOP = "stop"


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """A pipeline group as each member knows it."""

    group_id: str
    model: str
    members: tuple[str, ...]  # worker ids, stage order; members[0] leads
    ranges: tuple[tuple[int, int], ...]
    tokens_per_page: int
    rank: int

    @property
    def num_stages(self) -> int:
        return len(self.members)

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    @property
    def is_last(self) -> bool:
        return self.rank == self.num_stages - 1

    @property
    def layers(self) -> tuple[int, int]:
        return self.ranges[self.rank]

    def with_rank(self, rank: int) -> GroupSpec:
        return dataclasses.replace(self, rank=rank)

    def view(self) -> StageView:
        return StageView(self.group_id, self.rank, self.members, self.ranges)

    def validate(self, num_layers: int) -> None:
        if len(self.members) < 2 or len(self.members) != len(self.ranges):
            raise EngineInputError("a pipeline group needs two or more members, one range each")
        if len(set(self.members)) != len(self.members):
            raise EngineInputError("a worker appears twice in the group")
        if not 0 <= self.rank < len(self.members):
            raise EngineInputError(f"rank {self.rank} is outside the group")
        if (self.ranges[0][0] != 0 or self.ranges[-1][1] != num_layers
                or any(a[1] != b[0] for a, b in zip(self.ranges, self.ranges[1:], strict=False))
                or any(a >= b for a, b in self.ranges)):
            raise EngineInputError(
                f"ranges {list(self.ranges)} do not cover the {num_layers} layers in order")
        if self.tokens_per_page < 1:
            raise EngineInputError("tokens_per_page must be >= 1")


# ----------------------------------------------------------------- sequences on the wire
def seq_meta(seq: Sequence) -> dict[str, Any]:
    """A sequence's request and progress as JSON (no KV). Sampling is a function of the seed
    and the output index, so the seed is all the last stage needs to sample as one engine
    would."""
    return {
        "request_id": seq.seq_id,
        "model": seq.model,
        "arrival_s": seq.req.arrival_s,
        "slo": seq.req.slo.to_dict(),
        "predicted_output_tokens": seq.req.predicted_output_tokens,
        "prompt_token_ids": seq.tokens[: seq.num_prompt_tokens],
        "output_token_ids": seq.tokens[seq.num_prompt_tokens:],
        "sampling": seq.sampling.to_dict(),
        "seed": seq.seed,
        "text": seq.text,
        "num_emitted_chars": seq.num_emitted_chars,
        "num_computed": seq.num_computed,
    }


def request_of(meta: dict[str, Any]) -> EngineRequest:
    return EngineRequest(
        meta["request_id"], meta["model"], tuple(meta["prompt_token_ids"]),
        SamplingParams.from_dict(meta["sampling"]), tuple(meta["output_token_ids"]),
        float(meta["arrival_s"]), ServiceLevel.from_dict(meta.get("slo")),
        meta.get("predicted_output_tokens"),
    )


def seq_from_meta(eng: Any, meta: dict[str, Any], primary: bool) -> Sequence:
    """A sequence rebuilt from ``seq_meta`` (no pages, nothing computed); a primary one keeps
    the detokenized text, a shadow needs only tokens and the seed."""
    m = eng.model(meta["model"])
    seq = Sequence(request_of(meta), eng._next_order(), m.tokenizer, m.spec.max_context_tokens)
    if primary:
        seq.restore_text(meta["text"], int(meta["num_emitted_chars"]))
    seq.seed = int(meta["seed"])
    return seq


# ----------------------------------------------------------------- the step, both sides
def _apply_header(eng: Any, header: dict[str, Any], shadows: bool) -> list[tuple[Sequence, int]]:
    """Bring this stage's sequences to the leader's state and allocate the step's pages."""
    for rid in header.get("finished", ()):
        seq = eng._seqs.get(rid)
        if seq is not None:
            eng._finish(seq, "pipeline")
    for rid, toks in header.get("updates", ()):
        seq = eng._seqs.get(rid)
        if seq is not None:
            seq.tokens.extend(toks)
    for meta in header.get("admitted", ()):
        seq = seq_from_meta(eng, meta, primary=not shadows)
        eng._seqs[seq.seq_id] = seq
        eng._waiting.append(seq)
    for rid in header.get("preempt", ()):
        eng.preempt(eng._seqs[rid])
    plan = StepPlan(tuple(Chunk(rid, int(n)) for rid, n in header.get("chunks", ())), ())
    return eng._apply_plan(plan).get(header["model"], [])


def _forward(eng: Any, model: str, items: list[tuple[Sequence, int]],
             hidden: torch.Tensor | None) -> torch.Tensor:
    m = eng.model(model)
    batch = build_batch(items, m.layout.tokens_per_page, eng.device)
    if hidden is not None:
        hidden = hidden.to(eng.device)
    return m.stage.forward(eng.pool.view(m.layout), batch, hidden)


class PipelineLeader:
    """The first stage's side: plans lanes, runs layers [0, a), collects tokens, emits events.
    ``Engine.step`` delegates here while the engine leads a group."""

    def __init__(self, eng: Any, spec: GroupSpec, link: StageLink,
                 follower_pages: list[int]) -> None:
        self.eng = eng
        self.spec = spec
        self.link = link
        self.follower_pages = follower_pages  # each other stage's pool, in pages
        self.known: dict[str, int] = {}  # request -> tokens the other stages know of it
        self.inflight: deque[tuple[list[tuple[Sequence, int]], SendHandle]] = deque()
        self.busy: set[str] = set()  # requests in a micro-batch in flight
        self.num_micro_batches = 0
        #: called (under the engine lock) when a step fails: the group is broken
        self.on_failure: Callable[[Exception], None] | None = None

    # what the scheduler and the batch policy see: the tightest stage
    def group_pages(self) -> tuple[int, int]:
        """(total, free) pages of the group: each request takes as many on every stage."""
        eng = self.eng
        used = sum(len(s.pages) for s in eng._seqs.values())
        total = min([eng.pool.num_pages, *self.follower_pages])
        free = min([eng.pool.num_free_pages, *(p - used for p in self.follower_pages)])
        return total, max(free, 0)

    def adopt(self, seqs: list[Sequence]) -> None:
        """Sequences every stage already holds (from the group's KV exchange)."""
        for s in seqs:
            self.known[s.seq_id] = s.num_tokens

    def _header(self) -> dict[str, Any]:
        eng = self.eng
        current = eng._seqs
        finished = [rid for rid in self.known if rid not in current]
        for rid in finished:
            del self.known[rid]
        updates = []
        admitted = []
        for rid, seq in current.items():
            n = self.known.get(rid)
            if n is None:
                admitted.append(seq_meta(seq))
            elif n < seq.num_tokens:
                updates.append([rid, seq.tokens[n:]])
            self.known[rid] = seq.num_tokens
        return {"kind": STEP, "model": self.spec.model, "finished": finished,
                "updates": updates, "admitted": admitted}

    def _guarded(self, fn: Callable[[], list[TokenEvent]]) -> list[TokenEvent]:
        try:
            return fn()
        except Exception as e:
            if self.on_failure is None:
                raise
            log.exception("group %s: pipeline step failed", self.spec.group_id)
            self.inflight.clear()
            self.busy.clear()
            self.on_failure(e)
            events, self.eng._pending_events = self.eng._pending_events, []
            return events

    def step(self) -> list[TokenEvent]:
        """Send the next lane's micro-batch, collecting the oldest one first when every lane
        is busy (or nothing else can be sent)."""
        return self._guarded(self._step)

    def _step(self) -> list[TokenEvent]:
        eng = self.eng
        events, eng._pending_events = eng._pending_events, []
        events.extend(eng._drain_inbox())
        if len(self.inflight) >= self.spec.num_stages:
            events.extend(self._collect())
        if not self._send_lane() and self.inflight:
            events.extend(self._collect())
        if not eng._seqs and not self.inflight and self.known:
            self._send([], ())  # tell the others the last requests finished (frees pages)
            events.extend(self._collect())
        return events

    def _send_lane(self) -> bool:
        eng = self.eng
        view = eng._view()
        running = tuple(v for v in view.running if v.seq_id not in self.busy)
        waiting = tuple(v for v in view.waiting if v.seq_id not in self.busy)
        if not running and not waiting:
            return False
        tokens, seqs = lane_limits(self.spec.num_stages, view.token_budget, view.max_num_seqs,
                                   len(view.running) + len(view.waiting))
        # the lane's share of the running requests (the oldest not in flight), then room for
        # waiting ones up to its share of requests and tokens
        view = dataclasses.replace(view, running=running[:seqs], waiting=waiting,
                                   token_budget=tokens, max_num_seqs=seqs,
                                   num_free_pages=self.group_pages()[1])
        plan = eng.policy.plan(view, eng.clock.now_s())
        if not plan.chunks and not plan.preempt:
            return False
        items = eng._apply_plan(plan).get(self.spec.model, [])
        self._send(items, plan.preempt)
        return bool(items)

    def _send(self, items: list[tuple[Sequence, int]], preempt: tuple[str, ...]) -> None:
        header = self._header()
        header.update(preempt=list(preempt), chunks=[[s.seq_id, n] for s, n in items])
        tensors = [_forward(self.eng, self.spec.model, items, None)] if items else []
        handle = self.link.send(1, header, tensors)
        self.inflight.append((items, handle))
        self.busy.update(s.seq_id for s, _ in items)
        self.num_micro_batches += 1

    def _collect(self) -> list[TokenEvent]:
        """Wait for the oldest micro-batch's tokens and apply them."""
        items, handle = self.inflight.popleft()
        reply, _ = self.link.recv(self.spec.num_stages - 1)
        handle.wait()
        for s, _ in items:
            self.busy.discard(s.seq_id)
        return self._postprocess(items, reply["tokens"])

    def drain(self) -> list[TokenEvent]:
        """Collect every micro-batch in flight."""
        events: list[TokenEvent] = []
        while self.inflight:
            events.extend(self._collect())
        return events

    def keepalive(self) -> None:
        """An empty micro-batch while idle: the other stages' receives stay within their
        timeout."""
        with self.eng._lock:
            if self.eng.pipeline is not self or self.inflight:
                return

            def ping() -> list[TokenEvent]:
                self._send([], ())
                return self._collect()

            self.eng._pending_events.extend(self._guarded(ping))

    def _postprocess(self, items: list[tuple[Sequence, int]],
                     tokens: dict[str, int]) -> list[TokenEvent]:
        eng = self.eng
        m = eng.model(self.spec.model)
        events: list[TokenEvent] = []
        now_s = eng.clock.now_s()
        for seq, n in items:
            if eng._seqs.get(seq.seq_id) is not seq:  # aborted while in flight
                continue
            seq.num_computed += n
            if seq.num_computed != seq.num_tokens:
                continue
            tok = int(tokens[seq.seq_id])
            delta = seq.append(tok, m.eos_ids)
            events.append(TokenEvent(seq.seq_id, tok, delta, seq.num_output_tokens - 1,
                                     seq.finish_reason, now_s))
            if seq.finish_reason is not None:
                eng._finish(seq, seq.finish_reason)
        return events

    def send_control(self, kind: str, **data: Any) -> list[TokenEvent]:
        """Collect what is in flight, then send a control header (dissolve, stop) down the
        pipeline; returns the events the collected micro-batches made."""
        events = self.drain()
        header = self._header()
        header.update(kind=kind, **data)
        self.link.send(1, header).wait()
        return events


class PipelineFollower:
    """A later stage's side: applies each micro-batch's header, runs its layers, passes the
    hidden states on (or, as the last stage, samples and returns the tokens)."""

    def __init__(self, eng: Any, spec: GroupSpec, link: StageLink) -> None:
        self.eng = eng
        self.spec = spec
        self.link = link
        self.num_micro_batches = 0

    def serve(self) -> dict[str, Any]:
        """Run micro-batches until a control header arrives; returns it (passed on)."""
        spec, eng = self.spec, self.eng
        pending: deque[SendHandle] = deque()
        while True:
            header, tensors = self.link.recv(spec.rank - 1)
            if header["kind"] != STEP:
                if not spec.is_last:
                    pending.append(self.link.send(spec.rank + 1, header))
                for h in pending:
                    h.wait()
                with eng._lock:
                    _apply_header(eng, header, shadows=True)
                return header
            with eng._lock:
                items = _apply_header(eng, header, shadows=True)
                out = _forward(eng, spec.model, items, tensors[0]) if items else None
                if not spec.is_last:
                    pending.append(self.link.send(spec.rank + 1, header,
                                                  [out] if out is not None else []))
                else:
                    tokens: dict[str, int] = {}
                    if out is not None:
                        sampled = [s for s, n in items if s.num_computed + n == s.num_tokens]
                        for s, tok in zip(sampled, sample(out, sampled), strict=True):
                            tokens[s.seq_id] = tok
                    pending.append(self.link.send(0, {"tokens": tokens}))
                for seq, n in items:
                    seq.num_computed += n
            while len(pending) > 1:  # the last send may still be on its way
                pending.popleft().wait()
            self.num_micro_batches += 1
