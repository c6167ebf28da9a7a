"""Flow parameters: the table in docs/ORCHESTRATION.md is current, the README's `--param params=` example
parses, and every entry point defaults to every split found."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from typer.testing import CliRunner

from flows import params_doc
from flows.cli import get_app
from schemas.flow_params import IngestParams, PipelineParams, splits_found
from tasks import store

REPO = Path(__file__).resolve().parents[1]


def test_the_parameter_table_is_current() -> None:
    doc = params_doc.DOC.read_text(encoding="utf-8")
    assert params_doc.render(doc) == doc, "docs/ORCHESTRATION.md is stale: run `python -m flows.params_doc`"
    for flow, model in params_doc.FLOWS:
        for key in model.model_fields:
            assert f"| `{key}` |" in params_doc.table(flow, model)


def test_the_readme_pipeline_example_is_valid_pipeline_params() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    example = "prefect deployment run pipeline/pipeline --param"
    lines = [line for line in readme.splitlines() if line.startswith(example)]
    assert lines, "README lost its `prefect deployment run pipeline/pipeline --param params='{...}'` example"
    for line in lines:
        argv = shlex.split(line, comments=True)  # as the shell passes it
        value = argv[argv.index("--param") + 1]
        assert value.startswith("params="), line
        PipelineParams.model_validate(json.loads(value.removeprefix("params=")))


def test_every_example_in_the_orchestration_doc_validates() -> None:
    doc = params_doc.DOC.read_text(encoding="utf-8")
    for flow, payload in re.findall(r"prefect deployment run (\w+)/\w+ --param params='(.+?)'", doc):
        model = dict(params_doc.FLOWS)[flow]
        model.model_validate(json.loads(payload))


def test_one_default_for_splits_everywhere(sample_coco: Path, tmp_path: Path) -> None:
    found = splits_found(sample_coco)
    assert found and IngestParams().splits == found  # the ingest flow and deployment
    assert PipelineParams().ingest.splits == found  # `vistune run` and the pipeline deployment
    db = tmp_path / "v.duckdb"
    result = CliRunner().invoke(get_app(), ["ingest", "--coco", str(sample_coco), "--db", str(db)])
    assert result.exit_code == 0, result.output
    splits = {r["split"] for r in store.query("SELECT DISTINCT split FROM images", path=db)}
    assert splits == set(found)
