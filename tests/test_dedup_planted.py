"""Dedup quality on the benchmark's generator at a small size: planted copies found, hard negatives kept."""

from __future__ import annotations

from pathlib import Path

from bench.dedup_bench import generate, load_samples, score
from tasks.curation.dedup import DedupParams, dedup
from tasks.store import query


def test_planted_duplicates_are_found_and_hard_negatives_kept(db_path: Path) -> None:
    rows, planted, _ = generate(4000, seed=3)
    load_samples(db_path, rows)
    stats = dedup(db_path, params=DedupParams(scope="global"))
    removed = {r["sample_id"] for r in query("SELECT sample_id FROM duplicates", path=db_path)}
    result = score(removed, planted)
    assert result["precision"] >= 0.99 and result["recall"] >= 0.99, result
    assert not any(sample_id.startswith("hard-") for sample_id in removed)  # Jaccard 0.4-0.75: kept
    assert stats.exact_duplicates >= 200  # 5% exact copies planted, all differ only in case/punctuation
