"""Plan: which (image, sample type, prompt version, model) still lack a good sample -> `requests` rows.

A request's id hashes the model, the full messages and the API params, so planning is idempotent:
re-planning the same images writes nothing new, a prompt edit (new `prompt_version`) or another
model plans again. What counts as done is defined once, in `tasks/store/queries.py`: a slot with an
accepted sample or an answer awaiting validation is done; a slot whose answers were rejected is
planned again as a *regeneration* (the same messages with `seed` = the number of rejects, so a new
request and a new answer) until `max_regenerations` regenerations were rejected too.
Images are processed in chunks so memory stays flat however many images there are.
A row stores the request's own message and the id of its shared prefix (system and few-shots), which is
stored once in `prompt_prefixes` (`tasks/store/prefixes.py`); the id still hashes the full messages.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from schemas.recipes import SampleMix
from schemas.samples import sample_type
from schemas.settings import get_settings
from schemas.tables import PromptPrefixRow, RequestRow
from tasks import store
from tasks.prompting.formats import check_format, json_schema, sample_kind
from tasks.store import prefixes
from tasks.store.queries import slot_states
from tasks.store.request_ids import RequestIds

# Images per step (contexts loaded, requests built, one write transaction): at least IMAGE_CHUNK, and enough
# that a plan takes at most PLAN_STEPS steps, up to MAX_IMAGE_CHUNK. Some per-step costs grow with the database
# (the key check scans the stored request ids, each write connection's checkpoint), so a fixed step size made
# planning quadratic; a step's objects grow with its size. At 1.58M under a 256MB DuckDB cap, steps of 10,000 and
# 20,000 images took 151 and 141 s and raised RSS by 388 and 431 MiB (50,000 under 512MB: +679 MiB; all in
# docs/BENCHMARKS.md). The context queries read only the step's range of image ids.
IMAGE_CHUNK = 10_000
PLAN_STEPS = 32
MAX_IMAGE_CHUNK = 20_000
# Rows keep their shared prefix once (schema 4). False plans the way schema 3 did: full messages in every row,
# ids from `store.stable_hash` (bench/plan_scale.py's "old" side; the ids are the same either way).
SHARE_PREFIXES = True
# `store.stable_hash`'s serialisation, item by item
_dumps = functools.partial(json.dumps, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


class PrefixedHash:
    """`store.stable_hash(model, prefix + own, params)` without serialising and hashing the prefix per request.

    A list's text in that hash is `"[" + ",".join(items) + "]"`, item by item, so the hash state after the
    model and the prefix is computed once and copied for every request that shares them.
    """

    def __init__(self, model: str, prefix: list[dict[str, Any]]) -> None:
        if not prefix:
            raise ValueError("PrefixedHash needs a non-empty prefix")
        self.prefix = prefix
        self._head = hashlib.sha256(("[" + _dumps(model) + ",[" + ",".join(map(_dumps, prefix))).encode())

    def __call__(self, own: list[dict[str, Any]], params_text: str) -> str:
        """The id of `prefix + own` with params already serialised by `_dumps` (the same for many requests)."""
        h = self._head.copy()
        h.update(("," + ",".join(map(_dumps, own)) + "]," + params_text + "]").encode())
        return h.hexdigest()[:32]


@dataclass
class PlanResult:
    """The outcome of planning: the requests still to send and what they would cost in tokens."""

    # pending: planned now or earlier, no ok response yet; packed (a list of str took ~90 B an id)
    request_ids: RequestIds = field(default_factory=RequestIds)
    images: int = 0
    planned_new: int = 0  # rows inserted by this call
    already_ok: int = 0  # (image, type, prompt_version, model) with an accepted sample or an answer to validate
    regenerations: int = 0  # pending requests that regenerate a rejected answer
    given_up: int = 0  # slots whose answers were rejected more than max_regenerations times
    est_input_tokens: int = 0  # of the pending requests (image parts included, by the tile formula)
    # Image-grounded sets: images skipped because their file is missing or unreadable (not planned, counted)
    images_unavailable: int = 0
    unavailable: list[str] = field(default_factory=list)  # the first few reasons, each naming the id and path
    max_output_tokens: int = 0  # of the pending requests (max_tokens each)
    by_type: dict[str, int] = field(default_factory=dict)  # pending requests per sample type

    @property
    def pending(self) -> int:
        """How many requests still need a good response."""
        return len(self.request_ids)


def request_params(
    type_name: str, output_format: str, *, temperature: float, max_tokens: int
) -> dict[str, Any]:
    """The API params of a request (plus `output_format`, ours), part of its id."""
    params: dict[str, Any] = {"output_format": output_format, "temperature": temperature, "max_tokens": max_tokens}
    if output_format == "structured":
        params["response_format"] = {"type": "json_schema", "json_schema": json_schema(type_name)}
    return params


def shard(ids: Sequence[str], size: int) -> list[Sequence[str]]:
    """Split request ids into consecutive shards of at most `size` (for one worker or task each).

    Each shard is a slice of `ids`: of a plan's `RequestIds`, a view that pickles only its own ids."""
    if size < 1:
        raise ValueError(f"shard size must be >= 1, got {size}")
    return [ids[i : i + size] for i in range(0, len(ids), size)]


# Shard sizing from the plan (`shard_size_for`): a few shards per worker, so the workers finish close together
# and a retried shard redoes little, and few enough that the orchestrator's fixed cost per shard (a Prefect task
# run: ~50 ms, plus the engine's start) stays far below 1% of a shard's time.
SHARDS_PER_WORKER = 2
MIN_SHARD = 200
MAX_SHARD = 25_000


def shard_size_for(requests: int, workers: int, size: int | None = None) -> int:
    """Requests per shard: `size` when given, else from the plan's size and the number of workers.

    `workers * SHARDS_PER_WORKER` equal shards, more (a multiple of `workers`) when a shard would exceed
    `MAX_SHARD`, and none smaller than `MIN_SHARD`.
    """
    if size is not None:
        return size
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    shards = workers * SHARDS_PER_WORKER
    if requests > shards * MAX_SHARD:
        shards = -(-requests // MAX_SHARD)
        shards = -(-shards // workers) * workers
    return max(MIN_SHARD, -(-requests // shards))


def _chunks(items: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _count(messages: list[dict[str, Any]], model: str) -> int:
    from tasks.prompting.tokens import count_message_tokens

    return count_message_tokens(messages, model)


def plan_requests(
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
    mix: SampleMix | None = None,
) -> PlanResult:
    """Create the missing `requests` rows and return every pending request id (in image order).

    `limit_images` takes the first N images by id (or of `image_ids`). `dry_run` computes the
    same result without writing (for `vistune estimate`). `max_regenerations` (default: the
    `max_regenerations` setting) bounds how often a rejected answer is asked for again. `prompt_set` is a
    prompt set folder (default: vistune's own); its content hash is each request's `prompt_version`.
    `mix` gives each type only its share of the images (`tasks/prompting/mix.py` draws them, then plans each type).
    """
    from tasks.prompting.mix import plan_images
    from tasks.prompting.prompts import ImageUnavailable, build_messages, load_contexts
    from tasks.prompting.tokens import messages_tokens

    if mix is not None:
        from tasks.prompting.mix import plan_with_mix

        return plan_with_mix(
            plan_requests, mix, db_path, sample_types=sample_types, image_ids=image_ids, limit_images=limit_images,
            model=model, output_format=output_format, temperature=temperature, max_tokens=max_tokens, run_id=run_id,
            dry_run=dry_run, max_regenerations=max_regenerations, prompt_set=prompt_set)

    check_format(output_format)
    max_regen = get_settings().max_regenerations if max_regenerations is None else max_regenerations
    if max_regen < 0:
        raise ValueError(f"max_regenerations must be >= 0, got {max_regen}")
    types = [sample_type(t).name for t in sample_types]
    db = store.resolve_db(db_path)
    if not dry_run:
        store.ensure_schema(db)
    ids = plan_images(db, image_ids, limit_images)
    result = PlanResult(images=len(ids))
    pending: list[RequestIds] = []  # each step's, joined at the end
    params = {t: request_params(t, output_format, temperature=temperature, max_tokens=max_tokens) for t in types}
    now = store.utcnow()
    prefix_tokens: dict[tuple[str, str], int] = {}  # every request of a type shares the prompt prefix
    shared: dict[tuple[str, str], tuple[str, PrefixedHash]] = {}  # (type, version) -> (prefix_id, id hasher)
    params_text: dict[tuple[str, int], str] = {}  # (type, regeneration) -> params as the id hashes them
    stored_prefixes: set[str] = set()
    kinds = {t: sample_kind(t, output_format) for t in types}
    params_cell: dict[tuple[str, int], str] = {}  # (type, regeneration) -> the params column's JSON text
    step = max(IMAGE_CHUNK, min(MAX_IMAGE_CHUNK, -(-len(ids) // PLAN_STEPS)))
    for chunk in map(np.ndarray.tolist, _chunks(ids, step)):
        with store.read(db) as con:
            contexts = load_contexts(con, chunk)
            # The step's slots only: a re-plan of a large answered store held every slot's state at once.
            states = slot_states(con, model, (min(chunk), max(chunk)))
        # The rows as columns (`store.insert_columns`), built here without a row model per request.
        cols: dict[str, list[Any]] = {name: [] for name in (
            "request_id", "image_id", "sample_type", "prompt_version", "kind", "regeneration", "messages", "params",
            "prefix_id")}
        base_tokens: list[int] = []  # the shared prefix's tokens, per row
        last_messages: list[dict[str, Any]] = []  # the image's own message, per row: counted in one batch below
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
                if (t, regeneration) not in params_text:
                    params_text[(t, regeneration)] = _dumps(call_params)
                    params_cell[(t, regeneration)] = store.json_cell(call_params)
                if (t, version) not in prefix_tokens:
                    prefix_tokens[(t, version)] = _count(messages[:-1], model)
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
                    request_id = hasher(own, params_text[(t, regeneration)])
                else:
                    own, request_id = messages, store.stable_hash(model, messages, call_params)
                cols["request_id"].append(request_id)
                cols["image_id"].append(image_id)
                cols["sample_type"].append(t)
                cols["prompt_version"].append(version)
                cols["kind"].append(kinds[t])
                cols["regeneration"].append(regeneration)
                cols["messages"].append(store.json_cell(own))
                cols["params"].append(params_cell[(t, regeneration)])
                cols["prefix_id"].append(pid)
                base_tokens.append(prefix_tokens[(t, version)])
                last_messages.append(messages[-1])
        n = len(cols["request_id"])
        # prefix + the image's message (`count_message_tokens(messages)`, the prefix counted once per type)
        cols["est_input_tokens"] = [
            base + last for base, last in zip(base_tokens, messages_tokens(last_messages, model), strict=True)]
        if n and not dry_run:
            cols |= {"model": [model] * n, "output_format": [output_format] * n, "created_at": [now] * n,
                     "run_id": [run_id] * n}
            with store.write(db) as con:
                if new_prefixes:  # before the rows that name them
                    store.insert_rows(con, PromptPrefixRow, new_prefixes, on_conflict="ignore")
                result.planned_new += store.insert_columns(con, RequestRow, cols, on_conflict="ignore")
        pending.append(RequestIds(cols["request_id"]))
        result.est_input_tokens += sum(cols["est_input_tokens"])
        result.max_output_tokens += max_tokens * n
        for t, count in Counter(cols["sample_type"]).items():
            result.by_type[t] = result.by_type.get(t, 0) + count
        result.regenerations += sum(1 for r in cols["regeneration"] if r)
    result.request_ids = RequestIds.concat(pending)
    return result
