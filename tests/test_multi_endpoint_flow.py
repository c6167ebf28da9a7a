"""The generate flow with an endpoints file: every shard shares one rate-limit bucket per endpoint."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from flows.generate import generate_flow
from flows.ingest import ingest_flow
from schemas.flow_params import GenerateParams, IngestParams
from tasks import store
from tests.sim import SimConfig, start_simulator
from tests.test_multi_endpoint import served_ok, write_endpoints

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_the_generate_flow_sends_its_shards_to_every_endpoint_through_shared_buckets(
    db_path: Path, sample_coco: Path, tmp_path: Path
) -> None:
    ingest_flow(IngestParams(coco_dir=str(sample_coco), db_path=str(db_path)))
    with start_simulator(SimConfig()) as one, start_simulator(SimConfig()) as two:
        endpoints = write_endpoints(tmp_path / "endpoints.toml", {
            "one": {"base_url": one.base_url, "rpm": 3000}, "two": {"base_url": two.base_url, "rpm": 3000}})
        stats = asyncio.run(generate_flow(GenerateParams(db_path=str(db_path), model="gpt-4o-mini", shard_size=4,
                                                         max_workers=3, endpoints_file=str(endpoints))))
        assert stats.done == 12 and stats.failed == 0  # 4 images x 3 types in 3 shards
        assert len(served_ok(one, two)) == 12 and max(served_ok(one, two).values()) == 1
    assert set(stats.by_endpoint) == {"one", "two"}  # the shards' counts, added up
    assert sum(c.ok for c in stats.by_endpoint.values()) == 12
    endpoints_used = {r["endpoint"] for r in store.query("SELECT DISTINCT endpoint FROM responses", path=db_path)}
    assert endpoints_used <= {"one", "two"} and endpoints_used
    with sqlite3.connect(db_path.with_suffix(".ratelimit.sqlite")) as con:  # the flow's one limiter file
        buckets = {name for (name,) in con.execute("SELECT name FROM bucket")}
    assert {b.split("|")[0] for b in buckets if b.startswith("endpoint:")} == {"endpoint:one", "endpoint:two"}


def test_vistune_run_takes_an_endpoints_file(db_path: Path, sample_coco: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli import get_app

    with start_simulator(SimConfig()) as one, start_simulator(SimConfig()) as two:
        endpoints = write_endpoints(tmp_path / "endpoints.toml", {
            "one": {"base_url": one.base_url, "rpm": 3000}, "two": {"base_url": two.base_url, "rpm": 3000}})
        result = CliRunner().invoke(get_app(), ["run", "--coco", str(sample_coco), "--db", str(db_path),
                                                "--model", "gpt-4o-mini", "--endpoints", str(endpoints),
                                                "--export-dir", str(tmp_path / "export")])
        assert result.exit_code == 0, result.output
        assert len(served_ok(one, two)) == 12 and max(served_ok(one, two).values()) == 1
        assert served_ok(one) and served_ok(two)  # both endpoints took part
    endpoints_used = {r["endpoint"] for r in store.query("SELECT DISTINCT endpoint FROM responses", path=db_path)}
    assert endpoints_used == {"one", "two"}
