"""Prompts of an exact token length, built with the target model's tokenizer.

A prompt is a sequence of whole-word tokens (each a space plus a lowercase word, which every
byte-level BPE tokenizer keeps as one token whatever its neighbours), so its text re-encodes to
exactly the chosen ids. Prefix blocks named by a trace's ``hash_ids`` are drawn from a
generator seeded by the block's id, so requests that share blocks share their prompt prefix.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from kvfleet.workload.spec import PREFIX_BLOCK_TOKENS, RequestSpec

log = logging.getLogger(__name__)


class TokenizerLike(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class HfTokenizer:
    """A Hugging Face tokenizer without special tokens added."""

    def __init__(self, hf: Any) -> None:
        self.hf = hf

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.hf.decode(list(ids), skip_special_tokens=False))

    def __len__(self) -> int:
        return len(self.hf)


def load_tokenizer(name_or_path: str) -> TokenizerLike:
    """The tokenizer of a kvfleet model name, a checkpoint directory, or a ``.gguf`` file."""
    try:
        from kvfleet.common.models import load_tokenizer as kv_load  # type: ignore[attr-defined]
    except ImportError:
        kv_load = None
    if kv_load is not None:
        return HfTokenizer(kv_load(name_or_path).hf)
    from transformers import AutoTokenizer

    path = Path(name_or_path).expanduser()
    if name_or_path == "smollm2-135m":
        from kvfleet.load.peer_model import smollm2_gguf_path

        path = smollm2_gguf_path()
    if path.is_file() and path.suffix == ".gguf":
        return HfTokenizer(AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name))
    if path.is_dir():
        return HfTokenizer(AutoTokenizer.from_pretrained(str(path)))
    raise ValueError(
        f"no tokenizer for model {name_or_path!r}: give a kvfleet model name, a checkpoint "
        "directory or a .gguf file (--tokenizer)"
    )


def word_token_ids(tok: TokenizerLike, limit: int = 4096) -> list[int]:
    """Ids of tokens that are a space plus a lowercase ASCII word and encode back to themselves."""
    vocab = getattr(getattr(tok, "hf", None), "get_vocab", None)
    candidates = sorted(vocab().values()) if vocab else range(50_000)
    out: list[int] = []
    for i in candidates:
        text = tok.decode([i])
        word = text[1:]
        if (
            text.startswith(" ")
            and 3 <= len(word) <= 10
            and word.isascii()
            and word.isalpha()
            and word.islower()
            and tok.encode(text) == [i]
        ):
            out.append(int(i))
            if len(out) >= limit:
                break
    if len(out) < 64:
        raise ValueError("the tokenizer has too few whole-word tokens to build prompts from")
    return out


def _seed(*parts: object) -> int:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


class PromptBuilder:
    """Token ids and text of each request's prompt, exactly ``input_tokens`` long."""

    def __init__(self, tok: TokenizerLike, seed: int = 0) -> None:
        self.tok = tok
        self.seed = seed
        self.words = np.asarray(word_token_ids(tok), dtype=np.int64)

    def _draw(self, n: int, *key: object) -> list[int]:
        rng = np.random.default_rng(_seed(self.seed, *key))
        return [int(x) for x in rng.choice(self.words, size=n)]

    def ids(self, spec: RequestSpec) -> list[int]:
        n = spec.input_tokens
        ids: list[int] = []
        for h in spec.hash_ids:
            if len(ids) >= n:
                break
            ids.extend(self._draw(min(PREFIX_BLOCK_TOKENS, n - len(ids)), "block", h))
        if len(ids) < n:
            ids.extend(self._draw(n - len(ids), "request", spec.request_id, spec.model))
        return ids

    def build(self, spec: RequestSpec) -> tuple[list[int], str]:
        """(ids, text) with ``encode(text) == ids`` checked."""
        ids = self.ids(spec)
        text = self.tok.decode(ids)
        back = self.tok.encode(text)
        if back != ids:
            raise ValueError(
                f"request {spec.request_id}: the prompt does not re-encode to its "
                f"{len(ids)} tokens (got {len(back)}); this tokenizer is not supported"
            )
        return ids, text
