"""The engine: models, one KV page pool, and a continuous-batching step loop.

``step()`` reads as: drain the inbox -> ask the batch policy for a plan -> preempt and
allocate -> run each model's forward over its chunks -> sample and emit events.
``add_request`` and ``abort`` may be called from another thread while ``step`` runs: they
go through an inbox drained at the start of the next step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import torch

from kvfleet.common.clock import Clock, WallClock
from kvfleet.common.models import UnknownModelError, read_spec, read_weights, resolve_model
from kvfleet.common.models.errors import UnsupportedModelError
from kvfleet.common.models.tokenizer import load_tokenizer
from kvfleet.common.sampling import SamplingError
from kvfleet.services.scheduler.core.occupancy import SeqReport
from kvfleet.services.worker.core.batch_policy import (
    BatchPolicy,
    EngineView,
    FcfsBatchPolicy,
    SeqView,
    StepPlan,
)
from kvfleet.services.worker.core.step_cost import ModelStepCost
from kvfleet.services.worker.engine.batch_builder import build_batch
from kvfleet.services.worker.engine.config import EngineConfig
from kvfleet.services.worker.engine.kv_pool import PagePool
from kvfleet.services.worker.engine.layers import drop_layers, restore_layers
from kvfleet.services.worker.engine.loaded_model import (
    LoadedModel,
    model_shape,
    weights_bytes,
    workspace_bytes,
)
from kvfleet.services.worker.engine.migration import export_sequence, import_sequence
from kvfleet.services.worker.engine.model import ModelStage
from kvfleet.services.worker.engine.sampler import sample
from kvfleet.services.worker.engine.sequence import Sequence
from kvfleet.services.worker.engine.step_timer import StepTimer
from kvfleet.services.worker.engine.types import (
    Accounting,
    EngineInputError,
    EngineRequest,
    ModelNotFoundError,
    Occupancy,
    OutOfMemoryBudgetError,
    PartialModelError,
    SequenceExport,
    TokenEvent,
    WeightsEntry,
)

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Engine:
    def __init__(
        self,
        config: EngineConfig,
        policy: BatchPolicy | None = None,
        clock: Clock | None = None,
        step_costs: Mapping[str, ModelStepCost] | None = None,
    ) -> None:
        """``clock`` gives every ``now_s`` the engine passes on (the batch policy's, the token
        events' timestamps): the wall clock by default, the same as every other service.
        ``step_costs`` fixes the per-model step costs the batch policy sees (default: measured
        as the engine runs, see ``StepTimer``)."""
        self.config = config
        self.policy: BatchPolicy = policy or FcfsBatchPolicy()
        self.clock: Clock = clock or WallClock()
        self.device = torch.device(config.device)
        self.dtype = _DTYPES[config.dtype]
        if self.device.type == "cpu":
            torch.set_flush_denormal(True)
            torch.set_num_threads(config.num_threads or torch.get_num_threads())
        self.memory_bytes = self._budget(config)
        self._models: dict[str, LoadedModel] = {}
        # Empty until a model is loaded: the pool is sized to what the weights leave.
        self.pool = PagePool(config.page_size_bytes, 0, self.dtype, self.device)
        self._lock = threading.RLock()  # held by step, loads and migrations
        self._inbox_lock = threading.Lock()
        self._inbox: list[EngineRequest] = []
        self._aborts: list[str] = []
        self._live: set[str] = set()
        self._intake_seq = 0  # requests accepted (counted with the inbox, under its lock)
        self._seqs: dict[str, Sequence] = {}
        self._running: list[Sequence] = []
        self._waiting: list[Sequence] = []
        self._order = 0
        self._pending_events: list[TokenEvent] = []  # aborts from unload, sent by step()
        self.num_preemptions = 0  # recompute preemptions since start (a metric)
        self._reserved_pages = 0  # free pages the batch policy holds in reserve (last plan)
        self.step_timer = StepTimer()
        self._fixed_costs = dict(step_costs) if step_costs is not None else None
        self._first_token_s: dict[str, float] = {}
        # A pipeline group this engine is a stage of (engine/pipeline_group.py): its spec,
        # and while it leads the group, the leader's step (``step`` delegates to it).
        self.stage_spec: Any = None
        self.pipeline: Any = None

    # ------------------------------------------------------------------ memory
    def _budget(self, config: EngineConfig) -> int:
        """The memory budget: ``memory_bytes``, or on CUDA when it is unset, the device's
        free memory now less ``cuda_reserve_bytes`` (CUDA context, allocator slack)."""
        if config.memory_bytes is not None:
            return config.memory_bytes
        if self.device.type != "cuda":
            raise EngineInputError("memory_bytes is required on CPU")
        free, _total = torch.cuda.mem_get_info(self.device)
        budget = free - config.cuda_reserve_bytes
        if budget <= 0:
            raise EngineInputError(
                f"{self.device}: {free} bytes free, less than the reserve of "
                f"{config.cuda_reserve_bytes}; set memory_bytes"
            )
        return budget

    def model_dtype(self, name: str) -> torch.dtype:
        """Weights and KV dtype for model ``name`` (``model_dtypes``, else ``dtype``)."""
        return _DTYPES[self.config.model_dtypes.get(name, self.config.dtype)]

    def pool_pages(self, extra_weight_bytes: int = 0) -> int:
        """Pages the budget leaves for KV with the models held (plus ``extra_weight_bytes``
        more weights)."""
        used = sum(m.stage.num_bytes() for m in self._models.values()) + extra_weight_bytes
        ws = max(
            (
                workspace_bytes(
                    m.spec,
                    self.config.max_num_batched_tokens,
                    self.config.max_num_seqs,
                    m.stage.dtype,
                )
                for m in self._models.values()
            ),
            default=0,
        )
        return max(0, (self.memory_bytes - used - ws) // self.config.page_size_bytes)

    def resize_pool(self, num_pages: int | None = None) -> None:
        """Size the pool to ``num_pages`` (default: what the budget leaves after the models
        held), rewriting the page tables of sequences whose pages moved."""
        remap = self.pool.resize(self.pool_pages() if num_pages is None else num_pages)
        if remap:
            for seq in self._seqs.values():
                seq.pages = [remap.get(p, p) for p in seq.pages]

    # ------------------------------------------------------------------ models
    def load_model(self, name_or_path: str, layers: tuple[int, int] | None = None) -> None:
        """Load a model (or layers [a, b) of it); refused if it does not fit the budget."""
        with self._lock:
            if name_or_path in self._models:
                raise EngineInputError(f"model {name_or_path!r} is already loaded")
            try:
                source = resolve_model(name_or_path)
                spec = read_spec(source)
            except UnknownModelError as e:
                raise ModelNotFoundError(str(e)) from e
            except UnsupportedModelError as e:
                raise EngineInputError(str(e)) from e
            first, last = layers if layers is not None else (0, spec.num_layers)
            if not 0 <= first < last <= spec.num_layers:
                raise EngineInputError(
                    f"layer range [{first}, {last}) is invalid for {spec.num_layers} layers"
                )
            dtype = self.model_dtype(name_or_path)
            need = weights_bytes(spec, first, last, dtype) + workspace_bytes(
                spec, self.config.max_num_batched_tokens, self.config.max_num_seqs, dtype
            )
            have = self.memory_bytes - sum(m.stage.num_bytes() for m in self._models.values())
            have -= self.pool.num_used_pages * self.config.page_size_bytes
            if need > have:
                raise OutOfMemoryBudgetError(
                    f"model {name_or_path!r} layers [{first}, {last}) needs {need} bytes "
                    f"(weights + workspace) but only {have} of {self.memory_bytes} are free"
                )
            layout = self.pool.layout_for(last - first, spec.num_kv_heads, spec.head_dim, dtype)
            if layout.tokens_per_page < 1:
                raise EngineInputError(
                    f"page_size_bytes={self.config.page_size_bytes} is smaller than one token "
                    f"of {name_or_path!r} KV"
                )
            # Make room first: the pool gives back what the new weights will take, so weights
            # and pool never exceed the budget together (on a GPU: never run out mid-load).
            self.resize_pool(max(self.pool.num_used_pages, self.pool_pages(need)))
            try:
                stage = ModelStage(
                    spec,
                    read_weights(source, first, last),
                    first,
                    last,
                    dtype,
                    self.device,
                    compile_mode=self.config.compile,
                )
                tok = load_tokenizer(name_or_path) if stage.is_last else None
            except BaseException:
                self.resize_pool()
                raise
            self._models[name_or_path] = LoadedModel(name_or_path, source, spec, stage, layout, tok)
            self.step_timer.add_model(name_or_path, stage.num_bytes())
            self.resize_pool()
            log.info(
                "loaded %s layers [%d, %d): %d weight bytes, %d tokens/page",
                name_or_path,
                first,
                last,
                stage.num_bytes(),
                layout.tokens_per_page,
            )

    def unload_model(self, name: str) -> None:
        with self._lock:
            if name not in self._models:
                raise ModelNotFoundError(f"model {name!r} is not loaded")
            for seq in [s for s in self._seqs.values() if s.model == name]:
                self._pending_events.append(self._abort_event(seq.seq_id, seq.num_output_tokens))
                self._finish(seq, "abort")
            del self._models[name]
            self.step_timer.remove_model(name)
            self.resize_pool()

    def drop_layers(self, name: str, keep: tuple[int, int]) -> None:
        """Keep only layers [a, b) of a model; the freed weight memory becomes KV pages."""
        with self._lock:
            drop_layers(self, name, keep)

    def restore_layers(self, name: str, layers: tuple[int, int] | None = None) -> None:
        """Reload layers from the checkpoint (default: all); the model's sequences are
        re-prefilled."""
        with self._lock:
            restore_layers(self, name, layers)

    def models(self) -> list[str]:
        return list(self._models)

    def has_requests(self, model: str) -> bool:
        """Whether any request of ``model`` is here (queued in the inbox or in the engine)."""
        with self._inbox_lock:
            if any(r.model == model for r in self._inbox):
                return True
        return any(s.model == model for s in list(self._seqs.values()))

    def sequences(self, model: str | None = None) -> list[Sequence]:
        """Sequences in the engine (of ``model`` only, when given)."""
        return [s for s in self._seqs.values() if model is None or s.model == model]

    def model(self, name: str) -> LoadedModel:
        try:
            return self._models[name]
        except KeyError:
            raise ModelNotFoundError(f"model {name!r} is not loaded on this engine") from None

    # ------------------------------------------------------------------ requests
    def validate(self, req: EngineRequest) -> LoadedModel:
        m = self.model(req.model)
        if not isinstance(req.request_id, str) or not req.request_id:
            raise EngineInputError("request_id must be a non-empty string")
        try:
            req.sampling.validate()
        except SamplingError as e:
            raise EngineInputError(f"request {req.request_id}: {e}") from e
        n = len(req.prompt_token_ids) + len(req.output_token_ids)
        if not req.prompt_token_ids:
            raise EngineInputError(f"request {req.request_id}: the prompt is empty")
        if n >= m.spec.max_context_tokens:
            raise EngineInputError(
                f"request {req.request_id}: {n} prompt tokens do not fit the context of "
                f"{req.model!r} ({m.spec.max_context_tokens} tokens, one left to generate)"
            )
        vocab = m.spec.vocab_size
        if any(
            (not isinstance(t, int)) or not 0 <= t < vocab
            for t in (*req.prompt_token_ids, *req.output_token_ids)
        ):
            raise EngineInputError(f"request {req.request_id}: token ids must be in [0, {vocab})")
        longest = min(
            len(req.prompt_token_ids) + req.sampling.max_tokens, m.spec.max_context_tokens
        )
        pages = -(-longest // m.layout.tokens_per_page)
        if pages > self.pool.num_pages:
            raise EngineInputError(
                f"request {req.request_id}: up to {longest} tokens need {pages} KV pages, "
                f"the pool has {self.pool.num_pages}"
            )
        return m

    def add_request(self, req: EngineRequest) -> int:
        """Validate (raising EngineInputError) and queue. Thread-safe. Returns the request's
        intake sequence number: every occupancy snapshot with ``intake_seq`` at least this
        one counts the request."""
        m = self.validate(req)
        spec = self.stage_spec
        if spec is not None and spec.model == req.model:
            if not spec.is_leader:
                raise PartialModelError(
                    f"this engine is stage {spec.rank} of pipeline group {spec.group_id}; "
                    f"requests for {req.model!r} go to its first stage {spec.members[0]}"
                )
        elif not (m.stage.is_first and m.stage.is_last):
            raise PartialModelError(
                f"this engine holds only layers [{m.stage.first}, {m.stage.last}) of "
                f"{req.model!r}; serve it through a pipeline of stages"
            )
        return self._enqueue(req)

    def _enqueue(self, req: EngineRequest) -> int:
        with self._inbox_lock:
            if req.request_id in self._live:
                raise EngineInputError(f"request id {req.request_id!r} is already in use")
            self._live.add(req.request_id)
            self._inbox.append(req)
            self._intake_seq += 1
            return self._intake_seq

    def abort(self, request_id: str) -> bool:
        """Stop a request; the next step emits its abort event. Thread-safe."""
        with self._inbox_lock:
            if request_id not in self._live:
                return False
            self._aborts.append(request_id)
            return True

    def has_unfinished(self) -> bool:
        with self._inbox_lock:
            return bool(self._live)

    # ------------------------------------------------------------------ stepping
    def step(self) -> list[TokenEvent]:
        with self._lock:
            if self.pipeline is not None:
                return self.pipeline.step()  # type: ignore[no-any-return]
            events, self._pending_events = self._pending_events, []
            events.extend(self._drain_inbox())
            if not self._running and not self._waiting:
                self._reserved_pages = 0
                return events
            plan = self.policy.plan(self._view(), self.clock.now_s())
            self._reserved_pages = plan.num_reserved_pages
            groups = self._apply_plan(plan)
            for model_name, items in groups.items():
                m = self._models[model_name]
                if not (m.stage.is_first and m.stage.is_last):
                    raise RuntimeError(
                        f"{model_name!r} is held as layers [{m.stage.first}, {m.stage.last}): "
                        "step it through a Pipeline"
                    )
                t0 = time.perf_counter()
                batch = build_batch(items, m.layout.tokens_per_page, self.device)
                logits = m.stage.forward(self.pool.view(m.layout), batch)
                events.extend(self._postprocess(m, items, logits))
                self.step_timer.observe(model_name, sum(n for _, n in items),
                                        time.perf_counter() - t0)
            return events

    def _drain_inbox(self) -> list[TokenEvent]:
        with self._inbox_lock:
            new, self._inbox = self._inbox, []
            aborts, self._aborts = self._aborts, []
        events: list[TokenEvent] = []
        for req in new:
            m = self._models.get(req.model)
            if m is None:  # unloaded between add_request and now
                events.append(self._abort_event(req.request_id, len(req.output_token_ids)))
                with self._inbox_lock:
                    self._live.discard(req.request_id)
                continue
            seq = Sequence(req, self._next_order(), m.tokenizer, m.spec.max_context_tokens)
            self._seqs[seq.seq_id] = seq
            self._waiting.append(seq)
        self._waiting.sort(key=lambda s: (s.req.arrival_s, s.order))
        for rid in aborts:
            seq = self._seqs.get(rid)
            if seq is not None:
                events.append(self._abort_event(rid, seq.num_output_tokens))
                self._finish(seq, "abort")
        return events

    def _abort_event(self, rid: str, index: int) -> TokenEvent:
        return TokenEvent(rid, None, "", index, "abort", self.clock.now_s())

    def _view(self) -> EngineView:
        def sv(s: Sequence) -> SeqView:
            return SeqView(
                seq_id=s.seq_id,
                model=s.model,
                arrival_s=s.req.arrival_s,
                num_prompt_tokens=s.num_prompt_tokens,
                num_tokens=s.num_tokens,
                num_computed_tokens=s.num_computed,
                num_pages=len(s.pages),
                tokens_per_page=self._models[s.model].layout.tokens_per_page,
                max_tokens=s.sampling.max_tokens,
                num_output_tokens=s.num_output_tokens,
                predicted_output_tokens=s.req.predicted_output_tokens,
                ttft_slo_s=s.req.slo.ttft_s,
                tpot_slo_s=s.req.slo.tpot_s,
                priority=s.req.slo.rank,
                first_token_s=self._first_token_s.get(s.seq_id),
            )

        return EngineView(
            running=tuple(sv(s) for s in self._running),
            waiting=tuple(sv(s) for s in self._waiting),
            num_free_pages=self.pool.num_free_pages,
            token_budget=self.config.max_num_batched_tokens,
            max_num_seqs=self.config.max_num_seqs,
            step_costs=self.step_costs(),
        )

    def step_costs(self) -> dict[str, ModelStepCost]:
        """Each model's step costs as the batch policy sees them."""
        if self._fixed_costs is not None:
            return self._fixed_costs
        return self.step_timer.costs()

    def _apply_plan(self, plan: StepPlan) -> dict[str, list[tuple[Sequence, int]]]:
        for sid in plan.preempt:
            self.preempt(self._seqs[sid])
        groups: dict[str, list[tuple[Sequence, int]]] = {}
        for chunk in plan.chunks:
            seq = self._seqs[chunk.seq_id]
            tpp = self._models[seq.model].layout.tokens_per_page
            need = -(-(seq.num_computed + chunk.num_tokens) // tpp) - len(seq.pages)
            if need > 0:
                pages = self.pool.allocate(need)
                if pages is None:
                    raise RuntimeError(f"batch policy planned beyond free pages for {seq.seq_id}")
                seq.pages.extend(pages)
            if seq in self._waiting:
                self._waiting.remove(seq)
                self._running.append(seq)
            groups.setdefault(seq.model, []).append((seq, chunk.num_tokens))
        return groups

    def preempt(self, seq: Sequence) -> None:
        """Recompute preemption: free the pages; the sequence waits to be prefilled again."""
        log.debug("preempting %s (recompute %d tokens)", seq.seq_id, seq.num_tokens)
        self.pool.free(seq.pages)
        seq.pages = []
        seq.num_computed = 0
        self.num_preemptions += 1
        if seq in self._running:
            self._running.remove(seq)
        self._waiting.append(seq)
        self._waiting.sort(key=lambda s: (s.req.arrival_s, s.order))

    def _postprocess(
        self, m: LoadedModel, items: list[tuple[Sequence, int]], logits: torch.Tensor
    ) -> list[TokenEvent]:
        sampled: list[Sequence] = []
        for seq, n in items:
            seq.num_computed += n
            if seq.num_computed == seq.num_tokens:
                sampled.append(seq)
        events: list[TokenEvent] = []
        if not sampled:
            return events
        now_s = self.clock.now_s()
        for seq, tok in zip(sampled, sample(logits, sampled), strict=True):
            if seq.num_output_tokens == 0:
                self._first_token_s[seq.seq_id] = now_s
            delta = seq.append(tok, m.eos_ids)
            events.append(TokenEvent(
                seq.seq_id, tok, delta, seq.num_output_tokens - 1, seq.finish_reason, now_s
            ))
            if seq.finish_reason is not None:
                self._finish(seq, seq.finish_reason)
        return events

    def _finish(self, seq: Sequence, reason: str) -> None:
        seq.finish_reason = reason
        if seq.pages:
            self.pool.free(seq.pages)
            seq.pages = []
        self._seqs.pop(seq.seq_id, None)
        self._first_token_s.pop(seq.seq_id, None)
        if seq in self._running:
            self._running.remove(seq)
        if seq in self._waiting:
            self._waiting.remove(seq)
        with self._inbox_lock:
            self._live.discard(seq.seq_id)

    def _next_order(self) -> int:
        self._order += 1
        return self._order

    # ------------------------------------------------------------------ migration
    def export_sequence(
        self, request_id: str, since_tokens: int = 0, stop: bool = False, with_kv: bool = True
    ) -> SequenceExport:
        """KV of tokens [since_tokens, num_computed) for the layers held, with tokens and
        sampling state; ``stop`` removes the sequence here (no event is emitted for it);
        ``with_kv=False`` leaves the KV out (the importer re-prefills)."""
        with self._lock:
            self._admit_inbox(request_id)
            seq = self._seqs.get(request_id)
            if seq is None:
                raise EngineInputError(f"request {request_id!r} is not running on this engine")
            export = export_sequence(self.pool, self.model(seq.model), seq, since_tokens,
                                     with_kv)
            if stop:
                self._finish(seq, "migrated")
            return export

    def import_sequence(self, export: SequenceExport | list[SequenceExport]) -> None:
        """Rebuild a sequence from a base export (plus incremental ones) and continue it."""
        exports = export if isinstance(export, list) else [export]
        with self._lock:
            rid = exports[0].meta.get("request_id") if exports else None
            with self._inbox_lock:
                if rid in self._live:
                    raise EngineInputError(f"request id {rid!r} is already in use")
            seq = import_sequence(self.pool, self._models, exports, self._next_order())
            with self._inbox_lock:
                self._live.add(seq.seq_id)
            self._seqs[seq.seq_id] = seq
            if seq.pages:
                self._running.append(seq)
            else:
                self._waiting.append(seq)

    def _admit_inbox(self, request_id: str) -> None:
        """Move one queued request from the inbox into the engine (for export)."""
        with self._inbox_lock:
            reqs = [r for r in self._inbox if r.request_id == request_id]
            self._inbox = [r for r in self._inbox if r.request_id != request_id]
        for req in reqs:
            m = self._models[req.model]
            seq = Sequence(req, self._next_order(), m.tokenizer, m.spec.max_context_tokens)
            self._seqs[seq.seq_id] = seq
            self._waiting.append(seq)

    # ------------------------------------------------------------------ snapshots
    @property
    def num_reserved_pages(self) -> int:
        """Free pages the batch policy's last plan holds in reserve for admitted requests."""
        return min(self._reserved_pages, self.pool.num_free_pages)

    def occupancy(self) -> Occupancy:
        """A snapshot for the heartbeat (waits for a step in progress to end)."""
        with self._lock:
            return self._occupancy()

    def _occupancy(self) -> Occupancy:
        with self._inbox_lock:
            inbox = list(self._inbox)
            intake_seq = self._intake_seq
        tpp = {n: m.layout.tokens_per_page for n, m in self._models.items()}
        queued = sum(
            -(-(s.num_tokens - s.num_computed) // tpp[s.model]) - len(s.pages)
            for s in self._waiting
        )
        queued += sum(
            -(-(len(r.prompt_token_ids) + len(r.output_token_ids)) // tpp[r.model])
            for r in inbox if r.model in tpp
        )
        total, free = self.pool.num_pages, self.pool.num_free_pages
        seqs = (*self._running, *self._waiting)
        groups = {}
        spec = self.stage_spec
        if spec is not None:
            groups[spec.model] = spec.view()
            if self.pipeline is not None:
                total, free = self.pipeline.group_pages()
            elif not spec.is_leader:  # a stage's shadows are the leader's requests
                seqs = tuple(s for s in seqs if s.model != spec.model)
        return Occupancy(
            num_total_pages=total,
            num_free_pages=free,
            num_reserved_pages=min(self._reserved_pages, free),
            tokens_per_page=tpp,
            num_running=len(self._running),
            num_waiting=len(self._waiting) + len(inbox),
            models=tuple(self._models),
            num_queued_pages=max(0, queued),
            intake_seq=intake_seq,
            seqs=tuple(
                SeqReport(s.seq_id, s.model, len(s.pages), s.num_tokens, s.num_computed,
                          s.num_output_tokens, s.req.arrival_s, s.req.predicted_output_tokens)
                for s in seqs
            ),
            page_size_bytes=self.config.page_size_bytes,
            layers={n: (m.stage.first, m.stage.last) for n, m in self._models.items()},
            shapes={n: model_shape(m.spec, self.dtype) for n, m in self._models.items()},
            groups=groups,
        )

    def accounting(self) -> Accounting:
        return Accounting(
            memory_bytes=self.memory_bytes,
            workspace_bytes=max(
                (
                    workspace_bytes(
                        m.spec,
                        self.config.max_num_batched_tokens,
                        self.config.max_num_seqs,
                        m.stage.dtype,
                    )
                    for m in self._models.values()
                ),
                default=0,
            ),
            page_size_bytes=self.config.page_size_bytes,
            weights=tuple(
                WeightsEntry(n, m.stage.first, m.stage.last, m.stage.num_bytes())
                for n, m in self._models.items()
            ),
            num_total_pages=self.pool.num_pages,
            num_used_pages=self.pool.num_used_pages,
            num_reserved_pages=self.num_reserved_pages,
            tokens_per_page={n: m.layout.tokens_per_page for n, m in self._models.items()},
        )


__all__ = ["Engine", "ModelStage"]
