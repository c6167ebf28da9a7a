"""Eval LLM calls through the generation engine: `requests` rows in, outcomes (answer or failure) out.

An eval call is planned like a sample request (id = hash of model, messages and params, so planning twice
writes nothing new and an answered call is never paid again), sent by `tasks.llm.engine.send` (rate limits,
retries, journal before parsing, claims, budget, batch mode), then read back here: the `ok` answer, or the last
failed attempt with its reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tasks.eval.parsing  # noqa: F401  (registers the eval kinds with the engine's parser registry)
from schemas.eval import eval_sample_type
from schemas.generation import GenerateConfig, GenerateStats
from schemas.tables import RequestRow
from tasks import store

# Statuses of a final failed attempt that say the *answer* was unusable (a reject with its reason). Others
# (timeouts, 5xx, budget) mean no answer came: the call is simply tried again by a later run.
UNUSABLE_STATUSES = frozenset({"bad_output", "truncated", "refusal", "content_filter", "parse_error"})
ProgressCallback = Callable[[GenerateStats], None]


@dataclass(frozen=True)
class Outcome:
    """What the store holds for one eval request: its ok answer, else its last attempt (None: never sent)."""

    request_id: str
    status: str | None
    content: str | None
    response_id: str | None
    error: str | None

    @property
    def ok(self) -> bool:
        """An answer that parsed."""
        return self.status == "ok"

    @property
    def unusable(self) -> bool:
        """The endpoint answered, but the answer cannot be used (a reject)."""
        return self.status in UNUSABLE_STATUSES


def request_row(
    *, stage: str, image_id: int, version: str, model: str, output_format: str, kind: str,
    messages: list[dict[str, Any]], params: dict[str, Any], run_id: str | None = None,
) -> RequestRow:
    """The `requests` row of one eval call (`stage`: question, reference, answer, review)."""
    from tasks.prompting.tokens import count_message_tokens

    params = {**params, "output_format": output_format}  # ours, dropped before sending (LOCAL_PARAM_KEYS)
    return RequestRow(
        request_id=store.stable_hash(model, messages, params), image_id=image_id,
        sample_type=eval_sample_type(stage), prompt_version=version, model=model, output_format=output_format,
        kind=kind, messages=messages, params=params, est_input_tokens=count_message_tokens(messages, model),
        created_at=store.utcnow(), run_id=run_id,
    )


def plan(db: Path, rows: Sequence[RequestRow]) -> int:
    """Store the rows (ids already stored are left as they are); returns how many were new."""
    if not rows:
        return 0
    with store.write(db) as con:
        return store.insert_rows(con, RequestRow, list(rows), on_conflict="ignore")


def send(
    db: Path, request_ids: Sequence[str], config: GenerateConfig, *, on_progress: ProgressCallback | None = None
) -> GenerateStats:
    """Send the requests that lack an `ok` answer through the engine (online or batch, as `config.mode`)."""
    from tasks.llm.engine import send as engine_send

    if not request_ids:
        return GenerateStats()
    return engine_send(list(request_ids), config=config, db_path=db, on_progress=on_progress)


def outcomes(db: Path, request_ids: Sequence[str]) -> dict[str, Outcome]:
    """For each id: its ok response, else its latest attempt; ids never sent are absent."""
    if not request_ids:
        return {}
    with store.read(db) as con:
        rows = con.execute(
            "SELECT request_id, status, content, response_id, error FROM responses "
            "WHERE request_id IN (SELECT unnest(?::VARCHAR[])) "
            "QUALIFY row_number() OVER (PARTITION BY request_id ORDER BY (status = 'ok') DESC, created_at DESC, "
            "attempt DESC) = 1", [list(request_ids)]).fetchall()
    return {r[0]: Outcome(*r) for r in rows}


def engine_config(config: GenerateConfig | None, **updates: Any) -> GenerateConfig:
    """`config` (default: the engine's defaults) with `updates`, key and base URL filled from the settings."""
    from tasks.llm.engine import with_settings

    base = config or GenerateConfig()
    values = {name: getattr(base, name) for name in type(base).model_fields} | updates
    filled = with_settings(GenerateConfig.model_validate(values))
    if base.base_url_credentials is not None and filled.base_url_credentials is None:
        filled._base_url_credentials = base.base_url_credentials
    if filled.api_key is None and filled.base_url_credentials is None and filled.base_url is None:
        raise ValueError(f"no API key for api.openai.com (model {filled.model}): set OPENAI_API_KEY, or give the "
                         "base URL of a local OpenAI-compatible server that needs none")
    return filled
