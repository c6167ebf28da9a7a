"""The sample mix: which images get which sample type, drawn deterministically from a seed.

Each image's place in a type's draw is a stable hash of (seed, type, image id): a type with target N takes
the N images that rank first. So the draw
- is the same on every run, machine and Python (sha256, not `hash()`), so a rerun plans nothing new;
- only grows when N grows (raising a target adds images, never swaps the ones already generated);
- is independent per type (conversations and complex reasoning land on different images, as in
  LLaVA-Instruct-158K, where an image has one to three of the types).

`plan_with_mix` is the planning step that applies it: `plan_requests(..., mix=...)` hands over to it,
and it plans each type on that type's images only (`tasks/prompting/plan.py` does the rest, unchanged).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from schemas.recipes import SampleMix
from tasks import store


def rank_key(seed: int, type_name: str, image_id: int) -> bytes:
    """An image's place in the draw of one type (smaller comes first)."""
    return hashlib.sha256(f"{seed}\0{type_name}\0{image_id}".encode()).digest()


def select_images(mix: SampleMix, image_ids: Sequence[int]) -> dict[str, list[int]]:
    """Sample type -> its images (sorted by id) out of `image_ids`, exactly `mix.counts(len(image_ids))` each."""
    ids = sorted(set(map(int, image_ids)))
    chosen: dict[str, list[int]] = {}
    for type_name, n in mix.counts(len(ids)).items():
        ranked = sorted(ids, key=lambda image_id, t=type_name: rank_key(mix.seed, t, image_id))
        chosen[type_name] = sorted(ranked[:n])
    return chosen


def plan_images(db: str | Path | None, image_ids: Sequence[int] | None, limit_images: int | None) -> np.ndarray:
    """The images a plan covers: every image by id, or those of `image_ids`, then the first `limit_images`.

    One int64 array, 8 B an image (as a list of fetched rows, 1.58M images took ~150 MB)."""
    with store.read(db) as con:
        ids = con.execute("SELECT image_id FROM images ORDER BY image_id").fetchnumpy()["image_id"]
    if image_ids is not None:
        ids = ids[np.isin(ids, np.fromiter(map(int, image_ids), dtype=np.int64))]
    return ids if limit_images is None else ids[:limit_images]


def plan_with_mix(plan: Callable[..., Any], mix: SampleMix, db_path: str | Path | None, *,
                  sample_types: Sequence[str], image_ids: Sequence[int] | None = None,
                  limit_images: int | None = None, **kwargs: Any) -> Any:
    """`plan(...)` once per type of the mix, on that type's images, merged into one `PlanResult`.

    `sample_types` must name every type the mix wants (the mix decides the types; a type it does not
    name, or names with 0, gets no request). `limit_images` and `image_ids` choose the images the mix draws from.
    """
    from tasks.prompting.plan import PlanResult

    missing = [t for t, target in mix.targets.items() if target and t not in sample_types]
    if missing:
        raise ValueError(f"the mix asks for {', '.join(missing)}, which the sample types "
                         f"({', '.join(sample_types)}) leave out: add them or drop them from the mix")
    ids = plan_images(db_path, image_ids, limit_images)
    chosen = select_images(mix, ids)
    merged = PlanResult(images=len(set().union(*chosen.values())) if chosen else 0)
    for type_name in (t for t in sample_types if chosen.get(t)):
        part = plan(db_path, sample_types=[type_name], image_ids=chosen[type_name], **kwargs)
        _add(merged, part)
    return merged


def _add(total: Any, part: Any) -> None:
    # Every counter of the per-type plans summed, every list joined (an image skipped for two types counts twice).
    for f in dataclasses.fields(total):
        if f.name == "images":
            continue
        mine, theirs = getattr(total, f.name), getattr(part, f.name)
        if isinstance(mine, dict):
            for key, n in theirs.items():
                mine[key] = mine.get(key, 0) + n
        elif isinstance(mine, list):
            mine += theirs[: max(0, 5 - len(mine))] if f.name == "unavailable" else theirs
        else:
            setattr(total, f.name, mine + theirs)
