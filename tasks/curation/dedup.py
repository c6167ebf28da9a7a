"""Dedup: exact (normalised text) and near-duplicate (MinHash + LSH) removal, written to `duplicates`.

Steps, all in an in-memory DuckDB over a snapshot of `samples` (so the write lock is held only for
the final, short write):

1. normalise each sample's `text` (lower case, punctuation to spaces) in SQL;
2. **exact**: within a scope group, every copy of the same normalised text but the earliest;
3. **shingles** in SQL: each word is hashed, each word n-gram is `hash(w_i, …, w_{i+n-1})`;
4. **MinHash signatures** in numpy: `num_perm` hash permutations `a*h + b (mod 2^64)` and the minimum
   per sample. Measured on 158K samples: DuckDB's cross join + `min() GROUP BY` needs ~0.3 s per
   permutation on 2 cores, numpy ~0.05 s, so this one step leaves SQL (see docs/CURATION.md);
5. **LSH banding** in SQL: `bands x rows = num_perm`; two samples of the same scope group sharing a
   band bucket are candidates;
6. **verification** in SQL: exact Jaccard of the two shingle sets; pairs >= `threshold` are duplicates.

Which copy is kept: samples are ordered by (`created_at`, `sample_id`); a sample is removed when an
earlier sample of its scope group is an exact or near duplicate of it, and `duplicate_of` names the
earliest such sample. Scope `image` compares samples of the same image and sample type; `global`
compares everything. Each run recomputes the set and brings `duplicates` to it (rows of an earlier run
with other parameters are removed, unchanged rows keep their `created_at`), so reruns add nothing.

Memory (issue 16 goal 5): scope `image` runs the steps above on ranges of whole images of about
`CHUNK_SAMPLES` samples (no group spans two ranges, so the result is the same), so memory follows the chunk,
not the database. Scope `global` must compare every pair, so it runs once over all samples, but shingles and
signatures exist for one run of `minhash_chunk` docs at a time: what grows with the dataset is the texts,
their normalised copies and `bands` 8-byte bucket ids per sample (the banding join's input), plus the
shingle sets of the samples that have a candidate.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from schemas.tables import DuplicateRow
from tasks.store import insert_rows, read, utcnow, write

SCOPES = ("image", "global")
_SCOPE_KEY = {"image": "hash(image_id, sample_type)", "global": "0::UBIGINT"}


@dataclass(frozen=True)
class DedupParams:
    """Dedup settings; `bands`/`rows` default to the LSH split that best fits `threshold`."""

    threshold: float = 0.8
    scope: str = "image"
    ngram: int = 3
    num_perm: int = 128
    seed: int = 1
    bands: int | None = None
    rows: int | None = None
    # Candidates are verified by exact Jaccard, so a false positive costs only a comparison while a
    # false negative is a duplicate left in: the banding is chosen to weigh misses 19x more.
    false_negative_weight: float = 0.95

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"unknown dedup scope {self.scope!r}; expected one of {', '.join(SCOPES)}")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"dedup threshold must be in (0, 1], got {self.threshold}")
        if self.ngram < 1 or self.num_perm < 1:
            raise ValueError("ngram and num_perm must be positive")
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both bands and rows, or neither")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands*rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")

    def banding(self) -> tuple[int, int]:
        """(bands, rows) per band."""
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        return lsh_banding(self.threshold, self.num_perm, 1 - self.false_negative_weight, self.false_negative_weight)


def _probability(s: np.ndarray, bands: int, rows: int) -> np.ndarray:
    return 1.0 - (1.0 - s**rows) ** bands


def lsh_banding(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """The (bands, rows) minimising weighted false-positive and false-negative areas of the LSH S-curve."""
    best: tuple[float, int, int] | None = None
    below = np.linspace(0.0, threshold, 201)
    above = np.linspace(threshold, 1.0, 201)
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            false_pos = np.trapezoid(_probability(below, bands, rows), below)
            false_neg = np.trapezoid(1.0 - _probability(above, bands, rows), above)
            error = fp_weight * false_pos + fn_weight * false_neg
            if best is None or error < best[0]:
                best = (error, bands, rows)
    assert best is not None
    return best[1], best[2]


@dataclass
class DedupStats:
    """What one dedup run found and changed."""

    scope: str
    threshold: float
    bands: int
    rows: int
    samples: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    candidate_pairs: int = 0
    verified_pairs: int = 0
    survivors: int = 0
    rows_added: int = 0
    rows_removed: int = 0
    seconds: float = 0.0
    step_seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (for logs and Prefect artifacts)."""
        return asdict(self)


def minhash_signatures(
    values: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int, chunk: int = 1 << 16
) -> np.ndarray:
    """(n_docs, num_perm) uint64 MinHash signatures of shingle-hash sets given as flat values + offsets.

    Every document must have at least one shingle. Permutation p is `a_p * h + b_p mod 2^64` with odd
    `a_p`: a bijection of the 64-bit hashes whose high bits, which decide the minimum, mix all of `h`.
    Documents are processed in runs of about `chunk` shingles so that all permutations of a run reuse
    the CPU cache (2x faster than one pass over all shingles per permutation).
    """
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    n_docs = len(offsets) - 1
    signatures = np.empty((num_perm, n_docs), dtype=np.uint64)
    first = 0
    while first < n_docs:
        last = int(np.searchsorted(offsets, offsets[first] + chunk, side="right")) - 1
        last = min(max(last, first + 1), n_docs)
        low, high = offsets[first], offsets[last]
        run, starts = values[low:high], offsets[first:last] - low
        scratch = np.empty_like(run)
        for p in range(num_perm):
            np.multiply(run, a[p], out=scratch)
            np.add(scratch, b[p], out=scratch)
            signatures[p, first:last] = np.minimum.reduceat(scratch, starts)
        first = last
    return np.ascontiguousarray(signatures.T)


def band_buckets(signatures: np.ndarray, bands: int, rows: int, seed: int) -> np.ndarray:
    """(n_docs, bands) uint64 bucket ids: each band's `rows` minima combined by a random linear hash."""
    rng = np.random.default_rng(seed + 1)
    weights = rng.integers(1, 2**63, size=rows, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    out = np.zeros((signatures.shape[0], bands), dtype=np.uint64)
    for band in range(bands):
        block = signatures[:, band * rows : (band + 1) * rows]
        out[:, band] = (block * weights).sum(axis=1, dtype=np.uint64) ^ (block[:, 0] >> np.uint64(29))
    return out


def _shingle_sql(ngram: int, where: str) -> str:
    words = ", ".join(f"w[i + {k}]" for k in range(ngram))
    return f"""
    SELECT ord, scope_key,
           CASE WHEN len(w) < {ngram} THEN [hash(norm)]
                ELSE list_transform(range(1, len(w) - {ngram} + 2), lambda i: hash({words})) END AS shingles
    FROM (SELECT ord, scope_key, norm, list_transform(string_split(norm, ' '), lambda x: hash(x)) AS w
          FROM docs WHERE NOT is_exact_duplicate AND {where})
    ORDER BY ord
    """


def find_duplicates(
    samples: pa.Table, params: DedupParams, minhash_chunk: int = 50_000
) -> tuple[pa.Table, dict[str, float]]:
    """Duplicates among `samples` (sample_id, image_id, sample_type, text, created_at): the core, no I/O.

    Shingles and MinHash signatures are computed `minhash_chunk` docs at a time (the result does not depend
    on it); what stays for every doc is its normalised text and `bands` bucket ids.

    Returns a table (sample_id, duplicate_of, method, similarity), the row counts of each step
    (`docs`, `exact`, `candidates`, `verified`) and each step's seconds (keys ending in `_s`).
    """
    bands, rows = params.banding()
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[step] = round(now - clock, 3)
        clock = now

    try:
        con.register("samples_in", samples)
        con.execute(f"""
            CREATE TABLE docs AS
            SELECT sample_id, {_SCOPE_KEY[params.scope]} AS scope_key,
                   row_number() OVER (ORDER BY created_at, sample_id) AS ord,
                   -- = regexp_replace(text, '[^\\p{{L}}\\p{{N}}]+', ' '), in two passes that match far less
                   -- often (punctuation, then doubled spaces) than one pass matching every space: 1.6x faster
                   trim(regexp_replace(regexp_replace(lower(text), '[^\\p{{L}}\\p{{N}}\\s]+', ' ', 'g'),
                                       '\\s\\s+|[\\t\\n\\r\\f]', ' ', 'g')) AS norm
            FROM samples_in
        """)
        con.execute("""
            ALTER TABLE docs ADD COLUMN is_exact_duplicate BOOLEAN DEFAULT false;
            CREATE TABLE exact AS
            SELECT d.ord, k.keep AS keep_ord FROM docs d
            JOIN (SELECT scope_key, norm, min(ord) AS keep FROM docs GROUP BY scope_key, norm HAVING count(*) > 1) k
              USING (scope_key, norm)
            WHERE d.ord <> k.keep;
            UPDATE docs SET is_exact_duplicate = true WHERE ord IN (SELECT ord FROM exact);
        """)
        lap("normalise_exact_s")
        # Shingles and signatures exist for one run of `minhash_chunk` docs at a time; every doc keeps only its
        # `bands` bucket ids (8 bytes each), and shingle sets are built again later for candidates only.
        n_all = con.execute("SELECT count(*) FROM docs").fetchall()[0][0]
        pieces: list[pa.Table] = []
        shingle_s = 0.0
        for low in range(1, n_all + 1, minhash_chunk):
            started = time.perf_counter()
            shingles = con.sql(_shingle_sql(params.ngram, f"ord BETWEEN {low} AND {low + minhash_chunk - 1}"))
            shingles = shingles.to_arrow_table()
            shingle_s += time.perf_counter() - started
            if not len(shingles):
                continue
            lists = shingles.column("shingles").combine_chunks()
            values = lists.values.to_numpy(zero_copy_only=False).astype(np.uint64, copy=False)
            offsets = lists.offsets.to_numpy()
            buckets = band_buckets(minhash_signatures(values, offsets, params.num_perm, params.seed), bands, rows,
                                   params.seed)
            n_docs = len(shingles)
            pieces.append(pa.table({
                "ord": np.repeat(shingles.column("ord").to_numpy(), bands),
                "scope_key": np.repeat(shingles.column("scope_key").to_numpy(), bands),
                "band": np.tile(np.arange(bands, dtype=np.int16), n_docs),
                "bucket": buckets.reshape(-1),
            }))
            del shingles, lists, values, offsets, buckets
        lap("minhash_s")
        timings["shingles_s"] = round(shingle_s, 3)
        timings["minhash_s"] = round(timings["minhash_s"] - shingle_s, 3)
        band_table = pa.concat_tables(pieces) if pieces else pa.table({
            "ord": pa.array([], pa.int64()), "scope_key": pa.array([], pa.uint64()),
            "band": pa.array([], pa.int16()), "bucket": pa.array([], pa.uint64())})
        del pieces
        con.register("bands_in", band_table)
        con.execute("""
            CREATE TABLE candidates AS
            SELECT DISTINCT x.ord AS a, y.ord AS b
            FROM bands_in x JOIN bands_in y
              ON x.band = y.band AND x.bucket = y.bucket AND x.scope_key = y.scope_key AND x.ord < y.ord;
            CREATE TABLE candidate_docs AS SELECT a AS ord FROM candidates UNION SELECT b FROM candidates;
        """)
        con.unregister("bands_in")
        del band_table
        con.execute(f"""
            CREATE TABLE sets AS SELECT ord, list_distinct(shingles) AS s
            FROM ({_shingle_sql(params.ngram, "ord IN (SELECT ord FROM candidate_docs)")})
        """)
        lap("banding_s")
        con.execute("""
            CREATE TABLE verified AS
            SELECT a, b, inter / (len(sa) + len(sb) - inter)::DOUBLE AS similarity
            FROM (SELECT c.a, c.b, x.s AS sa, y.s AS sb, len(list_intersect(x.s, y.s)) AS inter
                  FROM candidates c JOIN sets x ON x.ord = c.a JOIN sets y ON y.ord = c.b)
            WHERE inter / (len(sa) + len(sb) - inter)::DOUBLE >= ?
        """, [params.threshold])
        result = con.sql("""
            WITH near AS (
                SELECT b AS ord, arg_min(a, a) AS keep_ord, arg_min(similarity, a) AS similarity
                FROM verified GROUP BY b
            ), removed AS (
                SELECT ord, keep_ord, 'exact' AS method, 1.0::DOUBLE AS similarity FROM exact
                UNION ALL SELECT ord, keep_ord, 'minhash', similarity FROM near
            )
            SELECT d.sample_id, k.sample_id AS duplicate_of, r.method, r.similarity
            FROM removed r JOIN docs d ON d.ord = r.ord JOIN docs k ON k.ord = r.keep_ord
            ORDER BY d.sample_id
        """).to_arrow_table()
        lap("verify_s")
        counts = {
            name: con.execute(f"SELECT count(*) FROM {name}").fetchall()[0][0]
            for name in ("docs", "exact", "candidates", "verified")
        }
    finally:
        con.close()
    return result, {**counts, **timings}


CHUNK_SAMPLES = 50_000  # scope `image`: samples read and compared at a time (whole images)
_SAMPLES_SQL = "SELECT sample_id, image_id, sample_type, text, created_at FROM samples"


def image_chunks(image_ids: np.ndarray, sample_counts: np.ndarray, chunk_samples: int) -> list[tuple[int, int]]:
    """(first, last) image_id ranges of about `chunk_samples` samples each, from each image's sample count
    (sorted by image_id): chunk k holds the images whose samples start in [k, k + 1) * `chunk_samples`. Every
    image lies in exactly one range, so no scope-`image` group spans two."""
    if not len(image_ids):
        return []
    before = np.cumsum(sample_counts) - sample_counts
    index = before // chunk_samples
    starts = np.flatnonzero(np.diff(index, prepend=-1))
    ends = np.append(starts[1:], len(index)) - 1
    return [(int(image_ids[first]), int(image_ids[last])) for first, last in zip(starts, ends, strict=True)]


def _find_in_chunks(
    db_path: str | Path | None, params: DedupParams, chunk_samples: int
) -> tuple[pa.Table, dict[str, float]]:
    """`find_duplicates` over the database's samples: all at once for scope `global` (any two samples may be
    copies), else image range by image range, summing the counts and step seconds."""
    if chunk_samples < 1:
        raise ValueError(f"dedup chunk_samples must be positive, got {chunk_samples}")
    with read(db_path) as con:
        if params.scope == "global":
            return find_duplicates(con.sql(_SAMPLES_SQL).to_arrow_table(), params)
        per_image = con.sql("SELECT image_id, count(*) AS n FROM samples GROUP BY 1 ORDER BY 1").fetchnumpy()
    parts: list[pa.Table] = []
    totals: dict[str, float] = {"docs": 0, "exact": 0, "candidates": 0, "verified": 0}
    ranges = image_chunks(per_image["image_id"], per_image["n"], chunk_samples)
    for first, last in ranges or [(0, -1)]:  # no samples: one empty pass
        with read(db_path) as con:  # a read per chunk: a writer waits for one chunk's read at most
            samples = con.sql(f"{_SAMPLES_SQL} WHERE image_id BETWEEN {int(first)} AND {int(last)}").to_arrow_table()
        found, counts = find_duplicates(samples, params)
        del samples
        parts.append(found)
        for key, value in counts.items():
            totals[key] = round(totals.get(key, 0) + value, 3)
    found = pa.concat_tables(parts).sort_by("sample_id")
    return found, {k: int(v) if not k.endswith("_s") else v for k, v in totals.items()}


def dedup(
    db_path: str | Path | None = None,
    *,
    threshold: float = 0.8,
    scope: str = "image",
    params: DedupParams | None = None,
    chunk_samples: int = CHUNK_SAMPLES,
) -> DedupStats:
    """Find exact and near duplicates in `samples` and bring the `duplicates` table to that set.

    Scope `image` reads and compares about `chunk_samples` samples at a time (whole images, see
    `image_chunks`); the result does not depend on the chunk size."""
    started = time.perf_counter()
    params = params or DedupParams(threshold=threshold, scope=scope)
    bands, rows = params.banding()
    stats = DedupStats(scope=params.scope, threshold=params.threshold, bands=bands, rows=rows)
    found, counts = _find_in_chunks(db_path, params, chunk_samples)
    stats.samples = counts["docs"]
    stats.exact_duplicates = counts["exact"]
    stats.candidate_pairs = counts["candidates"]
    stats.verified_pairs = counts["verified"]
    stats.near_duplicates = len(found) - counts["exact"]
    stats.survivors = stats.samples - len(found)
    stats.step_seconds = {k: v for k, v in counts.items() if k.endswith("_s")}
    now = utcnow()
    with write(db_path) as con:
        before = con.execute("SELECT count(*) FROM duplicates").fetchall()[0][0]
        con.register("new_duplicates", found)
        con.execute("""
            DELETE FROM duplicates d WHERE NOT EXISTS (
                SELECT 1 FROM new_duplicates n
                WHERE n.sample_id = d.sample_id AND n.duplicate_of = d.duplicate_of AND n.method = d.method
                  AND abs(n.similarity - d.similarity) < 1e-9 AND d.scope = ?)
        """, [params.scope])
        con.unregister("new_duplicates")
        stats.rows_removed = before - con.execute("SELECT count(*) FROM duplicates").fetchall()[0][0]
        stats.rows_added = insert_rows(con, DuplicateRow, (
            DuplicateRow(sample_id=r["sample_id"], duplicate_of=r["duplicate_of"], method=r["method"],
                         similarity=r["similarity"], scope=params.scope, created_at=now)
            for r in found.to_pylist()
        ))
    stats.seconds = round(time.perf_counter() - started, 3)
    return stats
