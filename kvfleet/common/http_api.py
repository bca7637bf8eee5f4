"""Names of the HTTP API's kvfleet-specific headers, shared by the gateway and its clients."""

REQUEST_ID_HEADER = "X-Request-Id"
PREDICTED_OUTPUT_TOKENS_HEADER = "X-Kvfleet-Predicted-Output-Tokens"
"""The gateway's output-length prediction for the request (tokens)."""
