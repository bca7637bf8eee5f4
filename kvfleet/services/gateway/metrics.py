"""The gateway's Prometheus metrics (one registry per gateway instance)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("kvfleet_gateway_requests_total", "Requests by outcome.",
                                ["api", "model", "status"], registry=self.registry)
        self.in_flight = Gauge("kvfleet_gateway_in_flight_requests", "Requests being served.",
                               registry=self.registry)
        self.prompt_tokens = Counter("kvfleet_gateway_prompt_tokens_total", "Prompt tokens.",
                                     ["model"], registry=self.registry)
        self.output_tokens = Counter("kvfleet_gateway_output_tokens_total", "Output tokens.",
                                     ["model"], registry=self.registry)
        self.ttft = Histogram("kvfleet_gateway_ttft_seconds", "Time to first token.",
                              ["model"], buckets=_LATENCY_BUCKETS_S, registry=self.registry)
        self.e2e = Histogram("kvfleet_gateway_e2e_seconds", "Request latency, end to end.",
                             ["model"], buckets=_LATENCY_BUCKETS_S, registry=self.registry)
        self.cancelled = Counter("kvfleet_gateway_cancelled_total", "Requests cancelled because "
                                 "the client went away or asked.", registry=self.registry)
