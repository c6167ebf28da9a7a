"""Export's streaming writer: the same JSON bytes as one `json.dumps` of the whole list, Parquet in row groups."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tasks.curation import export as export_module
from tasks.curation.export import RecordFile


def record(i: int) -> dict:
    # unicode, quotes, backslashes and newlines inside values: the text json.dumps escapes or keeps as is
    return {"id": f"s-{i:04d}", "image": f"train2017/{i:012d}.jpg", "conversations": [
        {"from": "human", "value": f"<image>\nWhat is \"item\" {i}?\tÉté — 猫 \\ {{}} []"},
        {"from": "gpt", "value": "Line one.\nLine two: ✓" * (i % 3 + 1)},
    ]}


@pytest.mark.parametrize("count", [0, 1, 2, 7, 25])
def test_json_bytes_match_one_dumps_of_the_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                count: int) -> None:
    monkeypatch.setattr(export_module, "EXPORT_BATCH", 3)  # several row groups and a partial last one
    records = [record(i) for i in range(count)]
    writer = RecordFile(tmp_path, "stem")
    for r in records:
        writer.add(r)
    paths = writer.close()
    assert paths == [str(tmp_path / "stem.json"), str(tmp_path / "stem.parquet")]
    expected = json.dumps(records, ensure_ascii=False, indent=1) + "\n"  # what export wrote before streaming
    assert (tmp_path / "stem.json").read_bytes() == expected.encode("utf-8")
    table = pq.read_table(tmp_path / "stem.parquet")
    assert table.to_pylist() == records
    assert pq.ParquetFile(tmp_path / "stem.parquet").metadata.num_row_groups == max(1, -(-count // 3))
    assert not list(tmp_path.glob("*.tmp"))
