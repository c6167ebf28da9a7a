"""Exact and near-duplicate removal: which copies go, which stay, scopes, thresholds, reruns."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from tasks import store
from tasks.curation.dedup import DedupParams, dedup, lsh_banding, minhash_signatures
from tasks.store import query
from tests.curation_rows import add_samples

_WORD_TEXT = ("red blue green bus car dog cat man woman child street park table kitchen window tree sky grass water "
         "boat plane train sign bench chair umbrella phone laptop plate cake pizza horse bike road light")
WORDS = _WORD_TEXT.split()


def text(seed: int, n: int = 60) -> str:
    rng = random.Random(seed)
    return "The image shows " + " ".join(rng.choice(WORDS) for _ in range(n)) + "."


def shingles(s: str, n: int = 3) -> set[tuple[str, ...]]:
    words = "".join(c if c.isalnum() else " " for c in s.lower()).split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: str, b: str) -> float:
    x, y = shingles(a), shingles(b)
    return len(x & y) / len(x | y)


def one_word_changed(s: str, position: int = 30) -> str:
    words = s.split()
    words[position] = "zebra"
    return " ".join(words)


def duplicates(db: Path) -> dict[str, dict]:
    return {r["sample_id"]: r for r in query("SELECT * FROM duplicates", path=db)}


def test_exact_and_near_duplicates_keep_the_earliest_copy(db_path: Path) -> None:
    base, other = text(1), text(2)
    near = one_word_changed(base)
    add_samples(db_path, [
        ("s-base", 1, "detail_description", base),
        ("s-other", 1, "detail_description", other),
        ("s-exact", 1, "detail_description", "  " + base.upper().replace(".", " !")),
        ("s-near", 1, "detail_description", near),
        ("s-spaced", 1, "detail_description", " —\t" + base.replace(" ", "\n", 5).replace(" ", " , ", 3) + "…"),
    ])
    stats = dedup(db_path)
    found = duplicates(db_path)
    assert set(found) == {"s-exact", "s-near", "s-spaced"}
    assert found["s-spaced"]["method"] == "exact" and found["s-spaced"]["duplicate_of"] == "s-base"
    assert found["s-exact"]["duplicate_of"] == "s-base" and found["s-exact"]["method"] == "exact"
    assert found["s-exact"]["similarity"] == 1.0
    assert found["s-near"]["duplicate_of"] == "s-base" and found["s-near"]["method"] == "minhash"
    assert found["s-near"]["similarity"] == pytest.approx(jaccard(base, near))
    assert found["s-near"]["scope"] == "image"
    assert (stats.exact_duplicates, stats.near_duplicates, stats.survivors) == (2, 1, 2)
    kept = query("SELECT sample_id FROM samples WHERE sample_id NOT IN (SELECT sample_id FROM duplicates)",
                 path=db_path)
    assert {r["sample_id"] for r in kept} == {"s-base", "s-other"}
    # all five answer one slot (image 1, detail_description, one prompt version): the dataset keeps the first
    assert [r["sample_id"] for r in query("SELECT sample_id FROM dataset", path=db_path)] == ["s-base"]


def test_rerun_adds_nothing_and_keeps_rows(db_path: Path) -> None:
    base = text(3)
    add_samples(db_path, [("a", 1, "conversation", base), ("b", 1, "conversation", one_word_changed(base))])
    dedup(db_path)
    first = duplicates(db_path)
    again = dedup(db_path)
    assert (again.rows_added, again.rows_removed) == (0, 0)
    assert duplicates(db_path) == first  # created_at included


def test_scope_image_compares_only_the_same_image_and_type(db_path: Path) -> None:
    base = text(4)
    add_samples(db_path, [
        ("a", 1, "conversation", base),
        ("b", 2, "conversation", base),  # other image
        ("c", 1, "complex_reasoning", base),  # other type
    ])
    dedup(db_path, scope="image")
    assert duplicates(db_path) == {}
    stats = dedup(db_path, scope="global")
    found = duplicates(db_path)
    assert {k: (v["duplicate_of"], v["scope"]) for k, v in found.items()} == {"b": ("a", "global"),
                                                                            "c": ("a", "global")}
    assert stats.rows_added == 2
    back = dedup(db_path, scope="image")  # the table follows the latest run's parameters
    assert back.rows_removed == 2 and duplicates(db_path) == {}


def test_threshold_is_a_parameter(db_path: Path) -> None:
    base = text(5)
    near = one_word_changed(one_word_changed(base, 20), 40)
    similarity = jaccard(base, near)
    assert 0.8 < similarity < 0.95
    add_samples(db_path, [("a", 1, "conversation", base), ("b", 1, "conversation", near)])
    assert dedup(db_path, threshold=0.95).near_duplicates == 0
    assert dedup(db_path, threshold=0.8).near_duplicates == 1


def test_dissimilar_texts_on_the_same_topic_are_kept(db_path: Path) -> None:
    base = text(6)
    words = base.split()
    rewritten = " ".join(w if i % 4 else "zebra" for i, w in enumerate(words))  # every 4th word changed
    assert jaccard(base, rewritten) < 0.5
    add_samples(db_path, [("a", 1, "conversation", base), ("b", 1, "conversation", rewritten)])
    assert dedup(db_path).near_duplicates == 0


def test_ties_on_created_at_keep_the_smaller_sample_id(db_path: Path) -> None:
    from datetime import datetime

    from schemas.tables import SampleRow
    from tasks.store import insert_rows, write

    t = datetime(2026, 1, 1)
    with write(db_path) as con:
        insert_rows(con, SampleRow, [
            SampleRow(sample_id=sid, request_id=sid, response_id=sid, image_id=1, sample_type="conversation",
                      prompt_version="v", model="m", data={}, text=text(7), created_at=t)
            for sid in ("zz", "aa", "mm")
        ])
    dedup(db_path)
    assert {k: v["duplicate_of"] for k, v in duplicates(db_path).items()} == {"mm": "aa", "zz": "aa"}


def test_chain_removes_only_samples_with_an_earlier_near_duplicate(db_path: Path) -> None:
    a = text(8, 40)
    b = one_word_changed(a, 12)
    c = one_word_changed(b, 26)
    add_samples(db_path, [("a", 1, "conversation", a), ("b", 1, "conversation", b), ("c", 1, "conversation", c)])
    dedup(db_path, threshold=0.8)
    found = {k: v["duplicate_of"] for k, v in duplicates(db_path).items()}
    # b and c each have an earlier copy above the threshold; c points at the earliest one it matches.
    expected_c = "a" if jaccard(a, c) >= 0.8 else "b"
    assert found == {"b": "a", "c": expected_c}


def test_short_texts_and_empty_table(db_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="vistune ingest"):  # no database yet: say so, create nothing
        dedup(db_path)
    assert not db_path.exists()
    store.ensure_schema(db_path)
    assert dedup(db_path).samples == 0
    add_samples(db_path, [("a", 1, "conversation", "Yes."), ("b", 1, "conversation", "yes"),
                          ("c", 1, "conversation", "No, it is not.")])
    stats = dedup(db_path)
    assert set(duplicates(db_path)) == {"b"} and stats.survivors == 2


def test_minhash_estimates_jaccard() -> None:
    rng = np.random.default_rng(0)
    universe = rng.integers(0, 2**63, size=400, dtype=np.uint64)
    x, y = universe[:300], universe[100:400]  # Jaccard 200 / 400 = 0.5
    values = np.concatenate([x, y])
    signatures = minhash_signatures(values, np.array([0, 300, 600]), num_perm=512, seed=3)
    assert abs((signatures[0] == signatures[1]).mean() - 0.5) < 0.08
    same = minhash_signatures(np.concatenate([x, x[::-1]]), np.array([0, 300, 600]), num_perm=64, seed=3)
    assert (same[0] == same[1]).all()


def test_banding_favours_recall_at_the_threshold() -> None:
    params = DedupParams()
    bands, rows = params.banding()
    assert bands * rows <= params.num_perm
    assert 1 - (1 - 0.8**rows) ** bands > 0.9  # a pair at the threshold is very likely a candidate
    assert 1 - (1 - 0.3**rows) ** bands < 0.01
    assert lsh_banding(0.5, 64)[1] < lsh_banding(0.9, 64)[1]  # a higher threshold wants longer bands


def test_bad_parameters_are_named() -> None:
    with pytest.raises(ValueError, match="scope"):
        DedupParams(scope="planet")
    with pytest.raises(ValueError, match="threshold"):
        DedupParams(threshold=1.5)
