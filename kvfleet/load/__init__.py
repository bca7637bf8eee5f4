"""The load generator: clients for kvfleet's gRPC API and OpenAI-compatible HTTP servers,
metrics as vLLM ``bench serve`` defines them, reports, plots, and comparisons.

``metrics``, ``slo`` and ``report`` are pure (no network) and shared with the simulator.
"""
