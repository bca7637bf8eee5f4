"""One request's state inside the simulator (mutable, slotted: it is the hot object)."""

from __future__ import annotations

from kvfleet.services.scheduler.core.types import RequestView
from kvfleet.services.worker.core.batch_policy import SeqView


class SimSeq:
    """A request from arrival to finish. Token counts follow the batch policy's conventions:
    ``num_tokens`` known tokens, of which ``num_computed`` have KV written."""

    __slots__ = (
        "idx", "request_id", "model", "arrival_s", "num_prompt_tokens", "max_tokens",
        "num_tokens", "num_computed", "num_pages", "num_output", "tokens_per_page",
        "dispatch_s", "first_token_s", "finish_s", "worker_idx", "num_preemptions",
        "num_migrations", "drop_reason", "predicted_output_tokens", "ttft_slo_s", "tpot_slo_s",
        "priority", "request_max_tokens", "isolated_s", "_view", "_request_view",
    )

    def __init__(
        self, idx: int, request_id: str, model: str, arrival_s: float,
        num_prompt_tokens: int, max_tokens: int,
    ) -> None:
        self.idx = idx
        self.request_id = request_id
        self.model = model
        self.arrival_s = arrival_s
        self.num_prompt_tokens = num_prompt_tokens
        self.max_tokens = max_tokens  # where its output ends (the trace's length)
        #: the max_tokens the request carries (what the policies see); its output length
        #: unless the client asked for more
        self.request_max_tokens = max_tokens
        self.num_tokens = num_prompt_tokens
        self.num_computed = 0
        self.num_pages = 0
        self.num_output = 0
        self.tokens_per_page = 0
        self.dispatch_s = -1.0
        self.first_token_s = -1.0
        self.finish_s = -1.0
        self.worker_idx = -1
        self.num_preemptions = 0
        self.num_migrations = 0
        self.drop_reason = ""
        self.predicted_output_tokens: int | None = None
        self.ttft_slo_s: float | None = None
        self.tpot_slo_s: float | None = None
        self.priority = 1
        self.isolated_s: float | None = None  # its latency alone on an idle worker
        #: The batch policy's view; set to None by whoever changes a count.
        self._view: SeqView | None = None
        self._request_view: RequestView | None = None

    def view(self) -> SeqView:
        """The batch policy's view, rebuilt only after a count changed."""
        v = self._view
        if v is None:
            v = self._view = SeqView(
                self.request_id, self.model, self.arrival_s, self.num_prompt_tokens,
                self.num_tokens, self.num_computed, self.num_pages, self.tokens_per_page,
                self.request_max_tokens, self.num_output, self.predicted_output_tokens,
                self.ttft_slo_s, self.tpot_slo_s, self.priority,
                self.first_token_s if self.first_token_s >= 0.0 else None,
            )
        return v

    def request_view(self) -> RequestView:
        """The scheduler's view of the request while it is queued."""
        if self._request_view is None:
            self._request_view = RequestView(
                self.request_id, self.model, self.arrival_s, self.num_prompt_tokens,
                self.request_max_tokens, 0, self.ttft_slo_s, self.tpot_slo_s, self.priority,
                self.predicted_output_tokens,
            )
        return self._request_view

    @property
    def done(self) -> bool:
        return self.finish_s >= 0.0 or bool(self.drop_reason)
