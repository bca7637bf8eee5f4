"""Identifiers."""

from __future__ import annotations

import re
import secrets

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def new_request_id() -> str:
    return "req-" + secrets.token_hex(12)


def valid_request_id(request_id: str) -> bool:
    """Client-chosen ids end up in Redis keys: keep them short and plain."""
    return bool(_REQUEST_ID.match(request_id))
