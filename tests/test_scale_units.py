"""Issue 16's faster paths agree with the ones they replace: batched token counts, column inserts, shard sizes."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from schemas.tables import ImageRow
from tasks import store
from tasks.prompting import tokens
from tasks.prompting.plan import MAX_SHARD, MIN_SHARD, SHARDS_PER_WORKER, shard, shard_size_for

MODEL = "gpt-4o-mini"


def test_batched_token_counts_equal_one_encode_per_text() -> None:
    texts = ["a dog on a mat", "", "<|endoftext|> is text here", "caf\u00e9 \U0001f600 \u4e2d\u6587", "x" * 5000]
    messages = [{"role": role, "content": text} for role in ("user", "assistant", "system") for text in texts]
    messages.append({"role": "user", "name": "bob", "content": "hi"})
    encoding = tokens.get_encoding(MODEL)
    expected = [tokens.TOKENS_PER_MESSAGE + len(encoding.encode(m["role"], disallowed_special=()))
                + len(encoding.encode(m["content"], disallowed_special=())) + ("name" in m)
                + (len(encoding.encode(m["name"], disallowed_special=())) if "name" in m else 0) for m in messages]
    assert tokens.messages_tokens(messages, MODEL) == expected
    many = messages * (tokens.BATCH_MIN_TEXTS // len(messages) + 1)  # large enough for the threaded slices
    assert tokens.messages_tokens(many, MODEL) == expected * (len(many) // len(messages))
    assert tokens.count_message_tokens(messages, MODEL) == tokens.REPLY_PRIMING + sum(expected)


def _columns(ids: list[int], names: list[str]) -> dict[str, list[object]]:
    return {"image_id": ids, "split": ["train2017"] * len(ids), "file_name": names, "width": [640] * len(ids),
            "height": [480] * len(ids), "coco_root": ["/coco"] * len(ids)}


def test_column_inserts_keep_keys_like_row_inserts(db_path: Path) -> None:
    store.ensure_schema(db_path)
    with store.write(db_path) as con:
        assert store.insert_columns(con, ImageRow, _columns([1, 2, 2], ["a.jpg", "b.jpg", "dup.jpg"])) == 2
        assert store.insert_columns(con, ImageRow, _columns([2, 3], ["c.jpg", "d.jpg"])) == 1  # 2 is stored
        assert store.insert_columns(con, ImageRow, _columns([3, 3], ["e.jpg", "f.jpg"]), on_conflict="replace") == 0
        with pytest.raises(duckdb.ConstraintException, match="duplicate key"):
            store.insert_columns(con, ImageRow, _columns([9, 9], ["g.jpg", "h.jpg"]), on_conflict="error")
        with pytest.raises(ValueError, match="no column"):
            store.insert_columns(con, ImageRow, {**_columns([4], ["x.jpg"]), "colour": ["red"]})
        assert store.insert_columns(con, ImageRow, _columns([], [])) == 0
    rows = store.query("SELECT image_id, file_name FROM images ORDER BY image_id", path=db_path)
    assert [(r["image_id"], r["file_name"]) for r in rows] == [(1, "a.jpg"), (2, "b.jpg"), (3, "f.jpg")]


@pytest.mark.parametrize("requests", [0, 1, 199, 20_000, 158_000, 1_580_000])
@pytest.mark.parametrize("workers", [1, 2, 4, 7])
def test_shard_sizes_from_the_plan_cover_every_request_in_a_few_shards_per_worker(requests: int, workers: int) -> None:
    size = shard_size_for(requests, workers)
    assert MIN_SHARD <= size <= max(MIN_SHARD, MAX_SHARD)
    shards = shard(list(range(requests)), size)
    assert sum(len(s) for s in shards) == requests
    if requests >= MIN_SHARD * workers * SHARDS_PER_WORKER:
        assert len(shards) >= workers * SHARDS_PER_WORKER - 1  # ceil division may leave the last one short
        assert len(shards) <= max(workers * SHARDS_PER_WORKER, -(-requests // MAX_SHARD) + workers)
    assert shard_size_for(requests, workers, 500) == 500  # a size given is used as is
