"""The parser registry: a request's `kind` names the function that checks its answer.

The engine knows nothing about sample types, eval questions or judge reviews. Each domain
registers a parser for its kinds (`tasks/prompting/formats.py` registers one per sample type and
output format), and the engine looks one up by the `kind` stored on the request.

A parser takes the message content and returns the parsed object. It raises `OutputError`
when the *model's* answer is unusable (stored as `bad_output`, which is retried); any other
exception is a bug in our own parser (stored as `parse_error` with the content kept, and never
re-sent: paying again would not fix our code).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

Parser = Callable[[str | None], Any]


class OutputError(ValueError):
    """The model's answer cannot be read as the request's kind (retryable: another answer may parse)."""


_PARSERS: dict[str, Parser] = {}

# Modules that register parsers when imported, loaded on the first unknown kind: a process that
# only imports the engine (a worker, a subprocess) still finds them. Names, so importing the engine
# loads no domain code.
PARSER_MODULES: list[str] = ["tasks.prompting.formats"]
_loaded = False


def register(kind: str, parser: Parser) -> None:
    """Make `parser` the checker of every request of `kind` (re-registering replaces it)."""
    _PARSERS[kind] = parser


def parser_for(kind: str) -> Parser:
    """The parser registered for `kind`, or a ValueError that names the known kinds."""
    global _loaded
    if kind not in _PARSERS and not _loaded:
        _loaded = True
        for name in PARSER_MODULES:
            importlib.import_module(name)
    try:
        return _PARSERS[kind]
    except KeyError:
        known = ", ".join(sorted(_PARSERS)) or "none"
        raise ValueError(f"no parser registered for request kind {kind!r} (known: {known}); import the module "
                         f"that registers it, or list it in tasks.llm.parsers.PARSER_MODULES") from None


def kinds() -> list[str]:
    """Every registered kind."""
    return sorted(_PARSERS)
