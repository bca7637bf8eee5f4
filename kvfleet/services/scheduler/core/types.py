"""Plain data the scheduler's policy core decides over."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class WorkerView:
    """One worker as the scheduler sees it (from its occupancy report)."""

    worker_id: str
    models: tuple[str, ...]
    num_total_pages: int
    num_free_pages: int
    tokens_per_page: dict[str, int] = field(default_factory=dict)
    num_running: int = 0
    num_waiting: int = 0
    alive: bool = True
    draining: bool = False
    queue_allowance_pages: int = 0  # how far beyond its free pages it may be committed
    #: pages of each request it holds or was promised (packing policies size bins by them)
    seq_pages: tuple[int, ...] = ()

    def can_serve(self, model: str) -> bool:
        return self.alive and not self.draining and model in self.models

    def can_take(self, num_pages: int, free_pages: int) -> bool:
        """Whether a request needing ``num_pages`` may be assigned with ``free_pages`` left
        (net of everything already committed). A request larger than the whole pool is let
        through so that the worker refuses it with a clear error."""
        return (
            num_pages > self.num_total_pages
            or free_pages - num_pages >= -self.queue_allowance_pages
        )


@dataclass(frozen=True, slots=True)
class RequestView:
    """One queued request as the scheduler sees it."""

    request_id: str
    model: str
    arrival_s: float
    num_prompt_tokens: int
    max_tokens: int
    num_output_tokens: int = 0
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None
    priority: int = 1  # rank of its priority class: 0 high, 1 normal, 2 low
    predicted_output_tokens: int | None = None

    @property
    def num_tokens(self) -> int:
        return self.num_prompt_tokens + self.num_output_tokens


@dataclass(frozen=True, slots=True)
class ClusterView:
    workers: tuple[WorkerView, ...]


@dataclass(frozen=True, slots=True)
class Assignment:
    request_id: str
    worker_id: str


@dataclass(frozen=True, slots=True)
class Decisions:
    """Assignments made now; requests left out stay queued (no live worker has the model,
    or none has room for them yet)."""

    assignments: tuple[Assignment, ...]
    unassigned: tuple[str, ...] = ()
