"""Errors the gateway answers with, in OpenAI's shape, and their gRPC codes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc


@dataclass
class ApiError(Exception):
    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    retry_after_s: int | None = None  # sent as Retry-After (HTTP) / retry-after (gRPC)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)} if self.retry_after_s else {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def grpc_code(self) -> grpc.StatusCode:
        return {
            400: grpc.StatusCode.INVALID_ARGUMENT,
            401: grpc.StatusCode.UNAUTHENTICATED,
            404: grpc.StatusCode.NOT_FOUND,
            409: grpc.StatusCode.ALREADY_EXISTS,
            413: grpc.StatusCode.INVALID_ARGUMENT,
            415: grpc.StatusCode.INVALID_ARGUMENT,
            429: grpc.StatusCode.RESOURCE_EXHAUSTED,
            503: grpc.StatusCode.UNAVAILABLE,
            504: grpc.StatusCode.DEADLINE_EXCEEDED,
        }.get(self.status, grpc.StatusCode.INTERNAL)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def unauthorized() -> ApiError:
    return ApiError(401, "Invalid or missing API key. Pass it as 'Authorization: Bearer <key>'.",
                    type="authentication_error", code="invalid_api_key")


def queue_full(model: str, retry_after_s: int) -> ApiError:
    return ApiError(429, f"The queue of '{model}' is full; retry later.", type="rate_limit_error",
                    code="queue_full", param="model", retry_after_s=retry_after_s)


def model_not_found(model: str) -> ApiError:
    return ApiError(404, f"The model '{model}' does not exist or is not served.",
                    param="model", code="model_not_found")


def too_many_requests(message: str, retry_after_s: int = 1) -> ApiError:
    return ApiError(429, message, type="rate_limit_error", code="overloaded",
                    retry_after_s=retry_after_s)


def unavailable(message: str, retry_after_s: int = 1) -> ApiError:
    return ApiError(503, message, type="service_unavailable", code="unavailable",
                    retry_after_s=retry_after_s)


def timeout(message: str, code: str) -> ApiError:
    return ApiError(504, message, type="timeout", code=code)
