"""The planning path before issue 16 goal 1, kept in the bench only, to time it beside the current one.

`plan_requests_before` is `tasks/prompting/plan.py`'s `plan_requests` at commit 874f880 (schema 4: each shared
prefix stored once): chunks of 2,000 images, one `RequestRow` model per request stored by `store.insert_rows`,
and each request's own message counted by its own tiktoken `encode` call (`_count_before`, that commit's
`count_message_tokens`). Same ids, rows and result as the current path (bench/plan_scale.py checks the ids).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from schemas.samples import sample_type
from schemas.settings import get_settings
from schemas.tables import PromptPrefixRow, RequestRow
from tasks import store
from tasks.prompting.formats import check_format, sample_kind
from tasks.prompting.plan import PlanResult, PrefixedHash, _chunks, _dumps, request_params
from tasks.prompting.tokens import REPLY_PRIMING, TOKENS_PER_MESSAGE, TOKENS_PER_NAME, image_part_tokens
from tasks.store import prefixes
from tasks.store.queries import slot_states

IMAGE_CHUNK = 2000
SHARE_PREFIXES = True


def _count(messages: list[dict[str, Any]], model: str) -> int:
    """Commit 874f880's `count_message_tokens`: one `encode` call per message."""
    from tasks.prompting.tokens import get_encoding

    encoding = get_encoding(model)
    total = REPLY_PRIMING
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if isinstance(value, list):
                total += sum(image_part_tokens(p, model) for p in value if isinstance(p, Mapping))
                value = "".join(p.get("text", "") for p in value if isinstance(p, Mapping))
            if isinstance(value, str):
                total += len(encoding.encode(value, disallowed_special=()))
            if key == "name":
                total += TOKENS_PER_NAME
    return total


def plan_requests_before(
    db_path: str | Path | None = None,
    *,
    sample_types: Sequence[str],
    model: str,
    output_format: str = "structured",
    limit_images: int | None = None,
    image_ids: Sequence[int] | None = None,
    temperature: float = 0.2,
    max_tokens: int = 2048,
    run_id: str | None = None,
    dry_run: bool = False,
    max_regenerations: int | None = None,
    prompt_set: str | Path | None = None,
) -> PlanResult:
    """`plan.plan_requests` as it was before the columnar path (schema 4, prefixes shared)."""
    from tasks.prompting.prompts import ImageUnavailable, build_messages, load_contexts

    check_format(output_format)
    max_regen = get_settings().max_regenerations if max_regenerations is None else max_regenerations
    if max_regen < 0:
        raise ValueError(f"max_regenerations must be >= 0, got {max_regen}")
    types = [sample_type(t).name for t in sample_types]
    db = store.resolve_db(db_path)
    if not dry_run:
        store.ensure_schema(db)
    with store.read(db) as con:
        ids = [r[0] for r in con.execute("SELECT image_id FROM images ORDER BY image_id").fetchall()]
        if image_ids is not None:
            wanted = set(map(int, image_ids))
            ids = [i for i in ids if i in wanted]
        if limit_images is not None:
            ids = ids[:limit_images]
        states = slot_states(con, model)
    result = PlanResult(images=len(ids))
    params = {t: request_params(t, output_format, temperature=temperature, max_tokens=max_tokens) for t in types}
    now = store.utcnow()
    prefix_tokens: dict[tuple[str, str], int] = {}  # every request of a type shares the prompt prefix
    shared: dict[tuple[str, str], tuple[str, PrefixedHash]] = {}  # (type, version) -> (prefix_id, id hasher)
    params_text: dict[tuple[str, int], str] = {}  # (type, regeneration) -> params as the id hashes them
    stored_prefixes: set[str] = set()
    for chunk in _chunks(ids, IMAGE_CHUNK):
        with store.read(db) as con:
            contexts = load_contexts(con, list(chunk))
        rows: list[RequestRow] = []
        new_prefixes: list[PromptPrefixRow] = []
        for image_id in chunk:
            ctx = contexts.get(image_id)
            if ctx is None:
                continue
            skipped = False
            for t in types:
                try:
                    messages, version = build_messages(ctx, t, output_format, prompt_set)
                except ImageUnavailable as exc:  # one bad file must not sink a plan of thousands: skip, count
                    if not skipped:  # once per image, however many of its types want the picture
                        skipped = True
                        result.images_unavailable += 1
                        if len(result.unavailable) < 5:
                            result.unavailable.append(str(exc))
                    continue
                state = states.get((image_id, t, version))
                if state is not None and state.done(max_regen):
                    if state.accepted or state.awaiting_validation:
                        result.already_ok += 1
                    else:
                        result.given_up += 1
                    continue
                regeneration = state.rejected if state is not None else 0
                # A regeneration varies the seed: a new request id, and a new answer from the provider.
                call_params = {**params[t], "seed": regeneration} if regeneration else params[t]
                if (t, version) not in prefix_tokens:
                    prefix_tokens[(t, version)] = _count(messages[:-1], model)
                # prefix + the image's message; the -3 drops the reply priming counted twice
                tokens = prefix_tokens[(t, version)] + _count(messages[-1:], model) - 3
                prefix, own = prefixes.split(messages)
                pid: str | None = None
                if SHARE_PREFIXES and prefix:
                    known = shared.get((t, version))
                    if known is None or known[1].prefix != prefix:  # the same files give the same prefix
                        known = shared[(t, version)] = (prefixes.prefix_id(prefix), PrefixedHash(model, prefix))
                        if known[0] not in stored_prefixes:
                            stored_prefixes.add(known[0])
                            new_prefixes.append(PromptPrefixRow(prefix_id=known[0], messages=prefix, created_at=now))
                    pid, hasher = known
                    if (t, regeneration) not in params_text:
                        params_text[(t, regeneration)] = _dumps(call_params)
                    request_id = hasher(own, params_text[(t, regeneration)])
                else:
                    own, request_id = messages, store.stable_hash(model, messages, call_params)
                rows.append(RequestRow(
                    request_id=request_id,
                    image_id=image_id, sample_type=t, prompt_version=version, model=model,
                    output_format=output_format, kind=sample_kind(t, output_format), regeneration=regeneration,
                    messages=own, params=call_params, est_input_tokens=tokens, created_at=now,
                    run_id=run_id, prefix_id=pid,
                ))
        if rows and not dry_run:
            with store.write(db) as con:
                if new_prefixes:  # before the rows that name them
                    store.insert_rows(con, PromptPrefixRow, new_prefixes, on_conflict="ignore")
                result.planned_new += store.insert_rows(con, RequestRow, rows, on_conflict="ignore")
        for row in rows:
            result.request_ids.append(row.request_id)
            result.est_input_tokens += row.est_input_tokens
            result.max_output_tokens += max_tokens
            result.by_type[row.sample_type] = result.by_type.get(row.sample_type, 0) + 1
            result.regenerations += row.regeneration > 0
    return result
