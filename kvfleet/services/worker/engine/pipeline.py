"""Serve a model cooperatively from engines holding consecutive layer ranges.

The first engine's batch policy plans each step; every stage applies the same plan to its
own pages (each stage keeps KV for its own layers), runs its layers on the previous stage's
hidden states, and the last stage samples. In one process the hidden states are handed
over directly; across workers the same calls sit on either side of a transfer.
"""

from __future__ import annotations

import torch

from kvfleet.services.worker.engine.batch_builder import build_batch
from kvfleet.services.worker.engine.engine import Engine
from kvfleet.services.worker.engine.types import EngineInputError, EngineRequest, TokenEvent


class Pipeline:
    def __init__(self, stages: list[Engine], model: str) -> None:
        if not stages:
            raise EngineInputError("a pipeline needs at least one stage")
        ranges = [(e.model(model).stage.first, e.model(model).stage.last) for e in stages]
        spec = stages[0].model(model).spec
        if (
            ranges[0][0] != 0
            or ranges[-1][1] != spec.num_layers
            or any(a[1] != b[0] for a, b in zip(ranges, ranges[1:], strict=False))
        ):
            raise EngineInputError(
                f"stages {ranges} do not cover the {spec.num_layers} layers of {model!r} in order"
            )
        self.stages = stages
        self.model = model

    def add_request(self, req: EngineRequest) -> None:
        if req.model != self.model:
            raise EngineInputError(f"this pipeline serves {self.model!r}, not {req.model!r}")
        for e in self.stages:
            e.validate(req)
        for e in self.stages:
            e._enqueue(req)

    def abort(self, request_id: str) -> bool:
        return all([e.abort(request_id) for e in self.stages])

    def has_unfinished(self) -> bool:
        return self.stages[-1].has_unfinished()

    def step(self) -> list[TokenEvent]:
        first, last = self.stages[0], self.stages[-1]
        events: list[TokenEvent] = []
        for e in self.stages:
            ev = e._drain_inbox()
            if e is last:
                events.extend(ev)
        if not first._running and not first._waiting:
            return events
        # the tightest stage (fewest free tokens) decides what fits
        tightest = min(
            self.stages,
            key=lambda e: e.pool.num_free_pages * e.model(self.model).layout.tokens_per_page,
        )
        plan = tightest.policy.plan(tightest._view(), first.clock.now_s())
        groups = [e._apply_plan(plan).get(self.model, []) for e in self.stages]
        if not groups[0]:
            return events
        hidden: torch.Tensor | None = None
        for e, items in zip(self.stages, groups, strict=True):
            m = e.model(self.model)
            batch = build_batch(items, m.layout.tokens_per_page, e.device)
            hidden = m.stage.forward(e.pool.view(m.layout), batch, hidden)
        assert hidden is not None
        step_events = last._postprocess(last.model(self.model), groups[-1], hidden)
        for e, items in zip(self.stages[:-1], groups[:-1], strict=True):
            for seq, n in items:
                seq.num_computed += n
            for ev in step_events:
                seq = e._seqs.get(ev.request_id)
                if seq is None:
                    continue
                if ev.token_id is not None:
                    seq.tokens.append(ev.token_id)
                if ev.finish_reason is not None:
                    e._finish(seq, ev.finish_reason)
        return events + step_events
