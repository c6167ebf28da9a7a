"""Dedup in chunks: any chunk size finds exactly the duplicates (and counts) of one pass over everything."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from tasks.curation.dedup import DedupParams, dedup, find_duplicates, image_chunks
from tasks.store import query, read
from tests.curation_rows import add_samples
from tests.test_dedup import one_word_changed, text

TYPES = ("conversation", "complex_reasoning")


def planted_rows(n_images: int = 60, seed: int = 11) -> list[tuple[str, int, str, str]]:
    """Samples of many images: exact and near copies within an image, and copies of other images' texts."""
    rng = random.Random(seed)
    rows: list[tuple[str, int, str, str]] = []
    texts: list[str] = []
    for image_id in range(1, n_images + 1):
        own: list[str] = []  # this image's long texts: most copies are of these, some of other images'
        for k in range(rng.randint(1, 5)):
            pool = own if own and rng.random() < 0.7 else texts
            roll = rng.random()
            if pool and roll < 0.2:
                body = rng.choice(pool).upper()  # an exact copy (after normalising)
            elif pool and roll < 0.45:
                body = one_word_changed(rng.choice(pool), rng.randint(5, 50))  # a near copy
            elif roll < 0.5:
                body = "Yes."  # short texts: one shingle each
            else:
                body = text(rng.randint(0, 10**6))
            if body != "Yes.":
                own.append(body)
                texts.append(body)
            rows.append((f"s-{image_id:03d}-{k}", image_id, TYPES[rng.random() < 0.2], body))
    rng.shuffle(rows)  # created_at follows this order, unrelated to image ids
    return rows


def duplicate_rows(db: Path) -> list[tuple]:
    return [(r["sample_id"], r["duplicate_of"], r["method"], round(r["similarity"], 12), r["scope"])
            for r in query("SELECT * FROM duplicates ORDER BY sample_id", path=db)]


def counts(stats: object) -> tuple:
    return tuple(getattr(stats, k) for k in ("samples", "exact_duplicates", "near_duplicates", "candidate_pairs",
                                             "verified_pairs", "survivors"))


def test_image_scope_chunks_give_the_same_duplicates(db_path: Path) -> None:
    add_samples(db_path, planted_rows())
    one = dedup(db_path, scope="image", chunk_samples=10**9)
    whole = duplicate_rows(db_path)
    assert one.exact_duplicates > 3 and one.near_duplicates > 3  # the data has both kinds within an image
    for chunk in (1, 4, 17):
        stats = dedup(db_path, scope="image", chunk_samples=chunk)
        assert (stats.rows_added, stats.rows_removed) == (0, 0)
        assert duplicate_rows(db_path) == whole
        assert counts(stats) == counts(one)


def test_global_scope_minhash_chunks_give_the_same_duplicates(db_path: Path) -> None:
    add_samples(db_path, planted_rows(seed=12))
    with read(db_path) as con:
        samples = con.sql("SELECT sample_id, image_id, sample_type, text, created_at FROM samples").to_arrow_table()
    params = DedupParams(scope="global")
    whole, whole_counts = find_duplicates(samples, params, minhash_chunk=10**9)
    assert whole_counts["exact"] > 3 and len(whole) - whole_counts["exact"] > 3
    for chunk in (1, 3, 50):
        found, found_counts = find_duplicates(samples, params, minhash_chunk=chunk)
        assert found.equals(whole)
        assert {k: v for k, v in found_counts.items() if not k.endswith("_s")} == {
            k: v for k, v in whole_counts.items() if not k.endswith("_s")}
    # and the database path (scope global reads everything at once) stores that set
    dedup(db_path, params=params)
    assert [r[0] for r in duplicate_rows(db_path)] == whole.column("sample_id").to_pylist()


def test_image_chunks_keep_each_image_whole() -> None:
    ids, counts = np.array([1, 2, 5, 9, 10]), np.array([3, 1, 4, 1, 2])
    assert image_chunks(ids, counts, 4) == [(1, 2), (5, 5), (9, 10)]
    assert image_chunks(ids, counts, 1) == [(1, 1), (2, 2), (5, 5), (9, 9), (10, 10)]
    assert image_chunks(ids, counts, 100) == [(1, 10)]
    assert image_chunks(np.array([], dtype=np.int64), np.array([], dtype=np.int64), 4) == []
