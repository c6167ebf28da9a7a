"""Dedup benchmark: 158K synthetic samples with planted exact and near duplicates (labels known).

Measures `tasks.curation.dedup.dedup` (DuckDB SQL + numpy MinHash) end to end on a DuckDB file, scores its
`duplicates` rows against the planted labels, and runs datasketch's MinHashLSH on the same texts
side by side (same shingles, permutations and banding; its candidates verified by exact Jaccard too).

    python -m bench.dedup_bench [--n 158000] [--scope global] [--no-datasketch]

Planted: exact copies (case, punctuation and spacing changed), near copies (a few word edits,
shingle Jaccard >= 0.85 to their original), and hard negatives (heavier rewrites, Jaccard 0.4-0.75,
labelled *not* duplicates). Copies are created after their original, so the original is the one kept.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from tasks.curation.dedup import DedupParams, dedup
from tasks.store import query, write

_COMMON_TEXT = (
    "the a an of in on with and is are there to at near its their this that which while by from two three "
    "several some large small white black red blue green wooden old young man woman person people dog cat "
    "table street car bus train kitchen room building tree sky water road sign plate food bench window"
)
COMMON = tuple(_COMMON_TEXT.split())
SUFFIXES = ("", "s", "ed", "ing", "er", "ly")


def make_vocabulary(rng: random.Random, size: int = 12_000) -> list[str]:
    """Common English words first, then pronounceable made-up words, so a Zipf draw looks like prose."""
    syllables = [c + v for c in "bcdfghklmnprstvwz" for v in "aeiou"]
    words = list(COMMON)
    seen = set(words)
    while len(words) < size:
        word = "".join(rng.choices(syllables, k=rng.randint(1, 3))) + rng.choice(SUFFIXES)
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def make_text(rng: random.Random, vocab: list[str], cum_weights: list[float], n_words: int) -> str:
    """Sentences of Zipf-distributed words with capitals, commas and full stops."""
    words = rng.choices(vocab, cum_weights=cum_weights, k=n_words)
    out, sentence = [], 0
    for word in words:
        sentence += 1
        if sentence == 1:
            word = word.capitalize()
        if sentence > 6 and rng.random() < 0.12:
            word += "."
            sentence = 0
        elif rng.random() < 0.05:
            word += ","
        out.append(word)
    return " ".join(out) + "."


def shingle_set(text: str, n: int = 3) -> set[tuple[str, ...]]:
    """Word n-grams of the normalised text (the same normalisation the SQL uses, in Python)."""
    words = re.sub(r"[^\w]+", " ", text.lower()).split()
    if len(words) < n:
        return {tuple(words)}
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(x: set, y: set) -> float:
    """Exact Jaccard similarity."""
    return len(x & y) / len(x | y) if x or y else 1.0


def edit_words(rng: random.Random, text: str, vocab: list[str], n_edits: int) -> str:
    """Substitute, insert or delete `n_edits` random words."""
    words = text.split()
    for _ in range(n_edits):
        i = rng.randrange(len(words))
        op = rng.random()
        if op < 0.5:
            words[i] = rng.choice(vocab)
        elif op < 0.8:
            words.insert(i, rng.choice(vocab))
        elif len(words) > 10:
            del words[i]
    return " ".join(words)


def restyle(rng: random.Random, text: str) -> str:
    """The same words with other case, punctuation and spacing: an exact duplicate after normalisation."""
    choice = rng.random()
    if choice < 0.33:
        return text.upper()
    if choice < 0.66:
        return text.replace(",", "").replace(".", " .  ")
    return "  " + text.lower().replace(" ", "\n", 3) + " !"


def generate(n: int, seed: int = 0, exact_rate: float = 0.05, near_rate: float = 0.05, hard_rate: float = 0.02):
    """Rows (sample_id, image_id, sample_type, text, created_at) and the set of planted duplicate ids."""
    rng = random.Random(seed)
    vocab = make_vocabulary(rng)
    cum, total = [], 0.0
    for rank in range(len(vocab)):
        total += 1.0 / (rank + 1) ** 1.05
        cum.append(total)
    types = [("conversation", 90, 260), ("detail_description", 70, 160), ("complex_reasoning", 50, 140)]
    start = datetime(2026, 1, 1)
    n_exact, n_near, n_hard = int(n * exact_rate), int(n * near_rate), int(n * hard_rate)
    n_orig = n - n_exact - n_near - n_hard
    rows: list[dict] = []
    for i in range(n_orig):
        sample_type, low, high = types[rng.choices(range(3), weights=(58, 23, 77))[0]]
        rows.append({"sample_id": f"orig-{i:06d}", "image_id": rng.randrange(n_orig // 2), "sample_type": sample_type,
                     "text": make_text(rng, vocab, cum, rng.randint(low, high)),
                     "created_at": start + timedelta(seconds=i)})
    duplicates: set[str] = set()
    near_sims: list[float] = []
    hard_sims: list[float] = []
    for kind, count in (("exact", n_exact), ("near", n_near), ("hard", n_hard)):
        made = 0
        while made < count:
            original = rows[rng.randrange(n_orig)]
            words = len(original["text"].split())
            if kind == "exact":
                text = restyle(rng, original["text"])
            elif kind == "near":
                text = edit_words(rng, original["text"], vocab, max(1, int(words * rng.uniform(0.005, 0.03))))
                sim = jaccard(shingle_set(text), shingle_set(original["text"]))
                if sim < 0.85:
                    continue  # keep planted positives clearly above the 0.8 threshold
                near_sims.append(sim)
            else:
                text = edit_words(rng, original["text"], vocab, max(3, int(words * rng.uniform(0.06, 0.15))))
                sim = jaccard(shingle_set(text), shingle_set(original["text"]))
                if not 0.4 <= sim <= 0.75:
                    continue
                hard_sims.append(sim)
            sample_id = f"{kind}-{made:06d}"
            rows.append({**original, "sample_id": sample_id, "text": text,
                         "created_at": start + timedelta(seconds=n_orig + len(rows))})
            if kind != "hard":
                duplicates.add(sample_id)
            made += 1
    info = {"near_similarity": [min(near_sims, default=0), float(np.median(near_sims or [0]))],
            "hard_negative_similarity": [min(hard_sims, default=0), max(hard_sims, default=0)]}
    return rows, duplicates, info


def load_samples(db: Path, rows: list[dict]) -> None:
    """Bulk-load rows into `samples` (arrow, not pydantic: 158K rows would dominate the setup)."""
    table = pa.table({
        "sample_id": [r["sample_id"] for r in rows],
        "request_id": [r["sample_id"] for r in rows],
        "response_id": [r["sample_id"] for r in rows],
        "image_id": [r["image_id"] for r in rows],
        "sample_type": [r["sample_type"] for r in rows],
        "prompt_version": ["bench"] * len(rows),
        "model": ["bench"] * len(rows),
        "data": ["{}"] * len(rows),
        "text": [r["text"] for r in rows],
        "created_at": pa.array([r["created_at"] for r in rows], type=pa.timestamp("us")),
    })
    with write(db) as con:
        con.register("bench_rows", table)
        con.execute("INSERT INTO samples BY NAME SELECT * FROM bench_rows")


def score(removed: set[str], truth: set[str]) -> dict[str, float]:
    """Precision and recall of removed samples against the planted duplicates."""
    hits = len(removed & truth)
    return {"removed": len(removed), "precision": hits / len(removed) if removed else 1.0,
            "recall": hits / len(truth) if truth else 1.0}


def run_datasketch(rows: list[dict], params: DedupParams) -> tuple[set[str], float]:
    """datasketch MinHash + MinHashLSH on the same shingles and banding; candidates verified by exact Jaccard."""
    from datasketch import MinHash, MinHashLSH

    bands, rows_per_band = params.banding()
    started = time.perf_counter()
    lsh = MinHashLSH(num_perm=params.num_perm, params=(bands, rows_per_band))
    ordered = sorted(rows, key=lambda r: (r["created_at"], r["sample_id"]))
    sets = [shingle_set(r["text"], params.ngram) for r in ordered]
    seen_exact: dict[tuple, int] = {}
    removed: set[str] = set()
    for index, (row, shingles) in enumerate(zip(ordered, sets, strict=True)):
        key = (row["image_id"], row["sample_type"]) if params.scope == "image" else ()
        norm = (key, re.sub(r"[^\w]+", " ", row["text"].lower()).strip())
        if norm in seen_exact:
            removed.add(row["sample_id"])
            continue
        seen_exact[norm] = index
        mh = MinHash(num_perm=params.num_perm, seed=params.seed)
        mh.update_batch([" ".join(s).encode() for s in shingles])
        for other in lsh.query(mh):
            other_row = ordered[other]
            same_scope = params.scope == "global" or (
                (other_row["image_id"], other_row["sample_type"]) == (row["image_id"], row["sample_type"]))
            if same_scope and jaccard(sets[other], shingles) >= params.threshold:
                removed.add(row["sample_id"])
                break
        lsh.insert(index, mh)
    return removed, time.perf_counter() - started


def main() -> None:
    """Generate, dedup with vistune and with datasketch, print a markdown table row per method."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=158_000)
    parser.add_argument("--scope", default="global", choices=("image", "global"))
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-datasketch", action="store_true")
    args = parser.parse_args()

    t0 = time.perf_counter()
    rows, truth, info = generate(args.n, seed=args.seed)
    print(f"generated {len(rows):,} samples ({len(truth):,} planted duplicates) in {time.perf_counter() - t0:.1f} s;"
          f" {json.dumps(info)}")
    params = DedupParams(threshold=args.threshold, scope=args.scope)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.duckdb"
        load_samples(db, rows)
        stats = dedup(db, params=params)
        removed = {r["sample_id"] for r in query("SELECT sample_id FROM duplicates", path=db)}
    ours = score(removed, truth)
    print(f"vistune stats: {json.dumps(stats.as_dict())}")
    table = ["| method | scope | samples | removed | precision | recall | seconds |", "|---|---|---|---|---|---|---|"]
    table.append(f"| vistune dedup (DuckDB SQL + numpy MinHash, {stats.bands}x{stats.rows}) | {args.scope} | "
                 f"{len(rows):,} | {ours['removed']:,} | {ours['precision']:.4f} | {ours['recall']:.4f} | "
                 f"{stats.seconds:.1f} |")
    if not args.no_datasketch:
        theirs_removed, seconds = run_datasketch(rows, params)
        theirs = score(theirs_removed, truth)
        table.append(f"| datasketch MinHashLSH (same banding, exact-Jaccard verify) | {args.scope} | {len(rows):,} | "
                     f"{theirs['removed']:,} | {theirs['precision']:.4f} | {theirs['recall']:.4f} | {seconds:.1f} |")
        table.append(f"\nspeed ratio datasketch / vistune: {seconds / stats.seconds:.1f}x")
    print("\n".join(table))


if __name__ == "__main__":
    main()
