"""The gateway's OpenAPI document (served at ``/openapi.json``).

The handlers parse their bodies by hand (size limits and depth checks come first), so the
document adds the request bodies itself, from the same pydantic models, and states the limits
the gateway enforces on each field (``frontend.check_sampling``, ``SamplingParams.validate``,
the service-level bounds): a client, or a fuzzer such as Schemathesis, can tell a request the
gateway accepts from one it refuses with a 4xx.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from kvfleet.common.sampling import MAX_SEED, MAX_STOP_STRING_CHARS, MAX_STOP_STRINGS, MAX_U32
from kvfleet.common.slo import MAX_TPOT_SLO_S, MAX_TTFT_SLO_S

PRIORITIES = ("high", "normal", "low")


def body_schema(cls: type[BaseModel]) -> dict[str, Any]:
    """An operation's ``requestBody``: JSON only, as the handlers require."""
    return {"required": True, "content": {"application/json": {"schema": {
        "$ref": f"#/components/schemas/{cls.__name__}"}}}}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}], "default": None}


def _int(lo: int, hi: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": lo, "maximum": hi}


def _stop_string() -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": MAX_STOP_STRING_CHARS}


def field_limits(max_tokens_limit: int) -> dict[str, dict[str, Any]]:
    """What the gateway accepts for each request field (both APIs)."""
    max_tokens = _nullable(_int(1, max_tokens_limit))
    return {
        "model": {"type": "string", "minLength": 1,
                  "description": "A served model (GET /v1/models lists them)."},
        "max_tokens": max_tokens,
        "temperature": {"type": "number", "minimum": 0, "maximum": 2, "default": 1.0},
        "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 1.0},
        "top_k": {**_int(0, MAX_U32), "default": 0},
        "seed": _nullable(_int(0, MAX_SEED)),
        "stop": {"anyOf": [_stop_string(),
                           {"type": "array", "items": _stop_string(),
                            "maxItems": MAX_STOP_STRINGS},
                           {"type": "null"}], "default": None},
        "stop_token_ids": {"type": "array", "items": _int(0, MAX_U32)},
        "n": {"type": "integer", "enum": [1], "default": 1,
              "description": "Only one choice per request."},
        "priority": _nullable({"type": "string", "enum": list(PRIORITIES)}),
        "max_completion_tokens": max_tokens,
        "prompt": {"anyOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1},
            {"type": "array", "items": _int(0, MAX_U32), "minItems": 1},
        ]},
    }


def _slo_limits(schema: dict[str, Any]) -> None:
    for name, hi in (("ttft_s", MAX_TTFT_SLO_S), ("tpot_s", MAX_TPOT_SLO_S)):
        schema["properties"][name] = _nullable(
            {"type": "number", "exclusiveMinimum": 0, "maximum": hi})


def openapi_document(app: FastAPI, bodies: tuple[type[BaseModel], ...],
                     max_tokens_limit: int) -> dict[str, Any]:
    """The API's OpenAPI document: routes, request bodies with their limits, bearer auth."""
    if app.openapi_schema is None:
        doc = get_openapi(title="kvfleet", version="1", routes=app.routes,
                          description="OpenAI-compatible API of a kvfleet gateway.")
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        limits = field_limits(max_tokens_limit)
        for cls in bodies:
            schema = cls.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            for name, spec in limits.items():
                if name in schema["properties"]:
                    schema["properties"][name] = {**spec,
                                                  "title": schema["properties"][name].get("title")}
            schemas[cls.__name__] = schema
        if "SloBody" in schemas:
            _slo_limits(schemas["SloBody"])
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
        app.openapi_schema = doc
    return app.openapi_schema
