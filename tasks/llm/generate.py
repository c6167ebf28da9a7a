"""Plan the missing sample requests, then send them: the one module of this package that knows sample types.

The engine (`tasks/llm/engine.py`) sends any `LlmRequest`; this glue asks the sample planner
(`tasks/prompting/plan.py`) what to send first. `tasks.llm.engine.generate` still resolves here.
"""

from __future__ import annotations

from pathlib import Path

from schemas.generation import GenerateConfig, GenerateStats
from tasks import store
from tasks.llm.engine import ProgressCallback, send, with_settings
from tasks.llm.ratelimit import RateLimiter


def generate(
    db_path: str | Path | None,
    config: GenerateConfig,
    *,
    limiter: RateLimiter | None = None,
    on_progress: ProgressCallback | None = None,
) -> GenerateStats:
    """Plan the missing requests for `config.types` / `config.limit` images, then send them (online or batch)."""
    from tasks.prompting.plan import plan_requests

    config = with_settings(config)
    if config.api_key is None and config.base_url is None:
        raise ValueError("no API key: set OPENAI_API_KEY (or --base-url for a local server that needs none)")
    db = store.resolve_db(db_path)
    plan = plan_requests(
        db, sample_types=config.types, model=config.model, output_format=config.format,
        limit_images=config.limit, temperature=config.temperature, max_tokens=config.max_tokens,
    )
    return send(plan.request_ids, db_path=db, config=config, limiter=limiter, on_progress=on_progress)
