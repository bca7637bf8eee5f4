"""What a worker reports of its KV memory, and the scheduler's view of it. Pure.

A worker's report (its heartbeat live, its state at step boundaries in the simulator) counts
pages free in its pool, pages its batch policy has reserved for running requests, and pages its
waiting queue needs to start. The scheduler also remembers what it assigned since: each
``Assign`` answer carries the worker's intake sequence number, and an assignment counts
against the worker until a report with that number or a later one shows it (or the worker
restarted). ``worker_view`` turns both into the free pages dispatch decides on, the same
function live and simulated ("virtual usage": it may go negative).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from kvfleet.services.scheduler.core.stages import ModelShapeView, StageView, serving_models
from kvfleet.services.scheduler.core.types import WorkerView


@dataclass(frozen=True, slots=True)
class SeqReport:
    """One request on a worker, as its report lists it (migration and packing use these)."""

    request_id: str
    model: str
    num_pages: int
    num_tokens: int  # prompt + generated tokens known
    num_computed_tokens: int  # tokens whose KV is written
    num_output_tokens: int
    arrival_s: float
    predicted_output_tokens: int | None = None

    @property
    def decoding(self) -> bool:
        """Prefill done: every known token but the last sampled one has its KV written."""
        return self.num_pages > 0 and self.num_computed_tokens == self.num_tokens - 1


@dataclass(frozen=True, slots=True)
class OccupancyReport:
    worker_id: str
    models: tuple[str, ...]
    num_total_pages: int
    num_free_pages: int  # free in the pool (reserved pages included)
    num_reserved_pages: int = 0  # promised by the batch policy to running requests
    num_queued_pages: int = 0  # what the waiting queue needs to start
    tokens_per_page: dict[str, int] = field(default_factory=dict)
    num_running: int = 0
    num_waiting: int = 0
    boot_id: str = ""
    intake_seq: int = 0  # requests the worker has accepted since it started
    seqs: tuple[SeqReport, ...] = ()
    page_size_bytes: int = 0
    layers: dict[str, tuple[int, int]] = field(default_factory=dict)  # range held per model
    shapes: dict[str, ModelShapeView] = field(default_factory=dict)
    groups: dict[str, StageView] = field(default_factory=dict)  # pipeline groups it is in
    node: str = ""  # workers of one node share its fastest links
    #: pages each request holds or needs, when ``seqs`` is not given (the simulator's
    #: step-boundary reports)
    seq_pages: tuple[int, ...] = ()

    @property
    def serving_models(self) -> tuple[str, ...]:
        """Models it takes requests for (not those it holds only a stage of)."""
        if not self.layers and not self.groups:
            return self.models
        return serving_models(self.models, self.layers, self.shapes, self.groups)

    @property
    def pipelined_models(self) -> tuple[str, ...]:
        """Models it serves as the leader of a pipeline group."""
        return tuple(m for m, g in self.groups.items() if g.rank == 0)

    def request_pages(self) -> tuple[int, ...]:
        """Pages each request on the worker holds, or needs to start (waiting ones)."""
        if not self.seqs:
            return self.seq_pages
        out = []
        for s in self.seqs:
            tpp = self.tokens_per_page.get(s.model, 0)
            need = -(-s.num_tokens // tpp) if tpp > 0 else s.num_pages
            out.append(max(s.num_pages, need))
        return tuple(out)

    @property
    def num_available_pages(self) -> int:
        """Free pages not reserved and not needed by the queue (may be negative)."""
        return self.num_free_pages - self.num_reserved_pages - self.num_queued_pages


@dataclass(frozen=True, slots=True)
class PendingAssignment:
    """An assignment the worker accepted (``intake_seq``) that its reports may not show yet."""

    request_id: str
    worker_id: str
    boot_id: str
    intake_seq: int
    num_pages: int


def unreflected(
    pending: Iterable[PendingAssignment], report: OccupancyReport
) -> list[PendingAssignment]:
    """The assignments ``report`` does not show yet (those of an earlier boot are gone)."""
    return [
        p for p in pending if p.boot_id == report.boot_id and p.intake_seq > report.intake_seq
    ]


def worker_view(
    report: OccupancyReport,
    pending: Sequence[PendingAssignment] = (),
    *,
    draining: bool = False,
    queue_fraction: float = 1.0,
) -> WorkerView:
    """The dispatch view of one worker: free pages net of reservations, of its queue's needs
    and of the pages promised to assignments its report does not show yet.

    ``queue_fraction`` of the pool is how far a worker may be committed beyond its free pages
    (requests it would queue locally); past that, requests wait in the scheduler's queue.
    """
    promised = unreflected(pending, report)
    return WorkerView(
        worker_id=report.worker_id,
        models=report.serving_models,
        num_total_pages=report.num_total_pages,
        num_free_pages=report.num_available_pages - sum(p.num_pages for p in promised),
        tokens_per_page=dict(report.tokens_per_page),
        num_running=report.num_running,
        num_waiting=report.num_waiting + len(promised),
        alive=True,
        draining=draining,
        queue_allowance_pages=int(queue_fraction * report.num_total_pages),
        seq_pages=report.request_pages() + tuple(p.num_pages for p in promised),
    )
