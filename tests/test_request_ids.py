"""RequestIds: a plan's pending ids packed in one array, read back as the same strs in the same order."""

from __future__ import annotations

import hashlib
import pickle

import pytest

from tasks.prompting.plan import shard
from tasks.store.request_ids import RequestIds


def hash_ids(n: int, salt: str = "") -> list[str]:
    return [hashlib.sha256(f"{salt}{i}".encode()).hexdigest()[:32] for i in range(n)]


def test_reads_back_the_ids_in_order_at_one_byte_a_character() -> None:
    ids = hash_ids(20_000)  # more than one iteration chunk
    packed = RequestIds(ids)
    assert len(packed) == 20_000
    assert list(packed) == ids
    assert packed[0] == ids[0] and packed[-1] == ids[-1] and packed[12_345] == ids[12_345]
    assert isinstance(packed[0], str)
    assert packed.nbytes == 32 * len(ids)  # a list of these strs holds ~90 B each
    with pytest.raises(IndexError):
        packed[20_000]


def test_a_slice_is_ids_too_and_pickles_only_its_own() -> None:
    ids = hash_ids(5_000)
    packed = RequestIds(ids)
    part = packed[100:300]
    assert isinstance(part, RequestIds)
    assert part == ids[100:300]
    assert list(packed[::-1][:2]) == [ids[-1], ids[-2]]
    blob = pickle.dumps(part)
    assert len(blob) < 200 * 32 + 500  # not the 5,000 ids of the array it views
    assert pickle.loads(blob) == ids[100:300]


def test_ids_of_any_text_and_length_are_kept() -> None:
    ids = ["r1", "request-twelve", "é-not-ascii", ""]
    packed = RequestIds(ids)
    assert list(packed) == ids
    assert "é-not-ascii" in packed and "r2" not in packed
    assert RequestIds.concat([RequestIds(["a", "bb"]), ids, []]) == ["a", "bb", *ids]
    assert RequestIds() == [] and list(RequestIds.concat([])) == []


def test_without_keeps_the_order_and_drops_the_ones_given() -> None:
    ids = hash_ids(1_000)
    sent = RequestIds(ids[::3])
    rest = RequestIds(ids).without(sent)
    assert rest == [rid for i, rid in enumerate(ids) if i % 3]
    assert RequestIds(ids).without([]) == ids
    assert RequestIds(["a", "é"]).without(RequestIds(["a"])) == ["é"]  # unicode against ASCII
    assert list(RequestIds(ids[:5]) + ids[5:7]) == ids[:7]


def test_shards_are_consecutive_slices_covering_every_id_once() -> None:
    ids = RequestIds(hash_ids(1_050))
    shards = shard(ids, 500)
    assert [len(s) for s in shards] == [500, 500, 50]
    assert [rid for s in shards for rid in s] == list(ids)
    assert shard(["a", "b", "c"], 2) == [["a", "b"], ["c"]]
