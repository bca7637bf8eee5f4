"""API keys, kept only as SHA-256 digests.

Keys are random tokens with plenty of entropy, so a fast hash is the right tool (a password
hash would only slow every request). A key's id (the first 16 hex digits of its digest) names
the owner of the requests it sends: only that key may cancel them.
"""

from __future__ import annotations

import hashlib
import re
import secrets

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def key_id(digest: str) -> str:
    return digest.removeprefix("sha256:")[:16]


def new_key() -> str:
    return "sk-kvfleet-" + secrets.token_urlsafe(32)


class ApiKeys:
    def __init__(self, keys: list[str] = (), digests: list[str] = ()) -> None:  # type: ignore[assignment]
        bad = [d for d in digests if not DIGEST.match(d)]
        if bad:
            raise ValueError("API key digests must look like sha256:<64 hex digits>")
        self._digests = frozenset(digests) | {hash_key(k) for k in keys}

    @property
    def open(self) -> bool:
        return not self._digests

    def check(self, presented: str) -> str | None:
        """The key's id if it is accepted ("" when the gateway is open), else None."""
        if self.open:
            return ""
        digest = hash_key(presented)
        return key_id(digest) if presented and digest in self._digests else None
