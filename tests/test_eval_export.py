"""Eval images never reach a training export: their samples and caption pairs are left out, and counted."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from schemas.generation import GenerateConfig
from tasks import pipeline, store
from tasks.curation.dedup import dedup
from tasks.curation.export import EXPORT_SUMMARY, export
from tasks.eval import sets
from tasks.ingest.coco import ingest
from tests.sim import SimConfig, start_simulator


def test_eval_images_are_absent_from_exports(db_path: Path, sample_coco: Path, tmp_path: Path) -> None:
    from flows.cli import get_app

    ingest(sample_coco, "train2017", db_path)
    with start_simulator(SimConfig()) as sim:
        config = GenerateConfig(model="gpt-4o-mini", base_url=sim.base_url, concurrency=4)
        pipeline.generate(db_path, config)  # samples for every image, the eval ones included
        sets.build_set(db_path, "held", split="train2017", per_category=1, config=config)
    dedup(db_path)
    held = store.query("SELECT image_id, image FROM eval_images", path=db_path)
    assert len(held) == 1
    held_id, held_path = held[0]["image_id"], held[0]["image"]
    in_dataset = store.query("SELECT count(*) AS n FROM dataset WHERE image_id = ?", [held_id], path=db_path)[0]["n"]
    assert in_dataset > 0  # the store has samples of it: export is what must keep them out

    result = export(db_path, tmp_path / "out", sample_coco)
    assert result.eval_images_left_out == 1 and result.eval_records_left_out == in_dataset + 1  # + its caption pair
    assert result.eval_summary() == f"{in_dataset + 1} record(s) of 1 eval image(s) left out (held out for " \
                                    "`vistune eval`)"
    for stem in ("llava_instruct", "llava_pretrain", "llava_instruct_conversation"):
        records = json.loads((tmp_path / "out" / f"{stem}.json").read_text())
        assert records and all(r["image"] != held_path for r in records), stem
    pretrain = json.loads((tmp_path / "out" / "llava_pretrain.json").read_text())
    assert len(pretrain) == 3  # 4 images, one held out
    summary = json.loads((tmp_path / "out" / EXPORT_SUMMARY).read_text())
    assert summary["eval_records_left_out"] == in_dataset + 1 and "held out" in summary["eval_summary"]

    done = CliRunner().invoke(get_app(), ["export", "--db", str(db_path), "--out", str(tmp_path / "cli"),
                                          "--image-root", str(sample_coco)])
    assert done.exit_code == 0, done.output
    assert "left out (held out for `vistune eval`)" in done.output
