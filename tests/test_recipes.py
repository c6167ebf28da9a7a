"""Recipes (issue 17): they load and validate, the paper's recipe says what the paper did, any field can be
overridden, `vistune estimate --recipe` prices every model without COCO, and `run --recipe demo` is `vistune demo`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from flows.cli import get_app
from schemas.flow_params import GenerateParams, PipelineParams
from schemas.recipes import Recipe
from tasks import recipes, store
from tasks.llm import pricing
from tasks.llm.estimate import batch_discount, priced_models
from training.config import load_config

VISTUNE = str(Path(sys.executable).parent / "vistune")


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(get_app(), list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_every_shipped_recipe_loads_and_validates() -> None:
    assert {"demo", "llava-instruct-158k"} <= set(recipes.names())
    for name in recipes.names():
        recipe = recipes.load(name)
        assert isinstance(recipe, Recipe) and recipe.name == name
        params = PipelineParams(recipe=name)  # every value is a valid flow parameter
        assert params.recipe == name


def test_the_paper_recipe_says_what_the_paper_did() -> None:
    recipe = recipes.load("llava-instruct-158k")
    assert recipe.coco.split == "train2014" and recipe.coco.images == 82_783
    assert "train2017" in recipe.coco.note  # the 2014/2017 relation is stated
    assert recipe.mix is not None and recipe.mix.counts(recipe.coco.images) == {
        "conversation": 58_000, "detail_description": 23_000, "complex_reasoning": 77_000}
    assert recipe.generate["model"] == "gpt-4" and pricing.known("gpt-4")
    assert recipe.generate["mode"] == "batch" and recipe.generate["output_format"] == "llava-text"
    assert recipe.eval.set == "llava-bench"
    # both stages: the config file with the recipe's overrides has the paper's hyperparameters
    config = recipes.train_config(recipe)
    assert config is not None and Path(config).is_file()
    stage1 = load_config(config, recipe.train.stage1_overrides)
    stage2 = load_config(config, recipe.train.stage2_overrides)
    assert (stage1.stage1.learning_rate, stage1.stage1.batch_size, stage1.stage1.epochs) == (2e-3, 128, 1)
    assert (stage2.stage2.learning_rate, stage2.stage2.batch_size, stage2.stage2.epochs) == (2e-5, 32, 3)
    assert stage1.stage1.train == ("projector",) and stage2.stage2.train == ("projector", "llm")
    assert str(stage2.stage2.data) == "data/export/llava_instruct.json" and str(stage2.image_root) == "data/coco"
    assert str(stage1.stage1.data).endswith("chat.json")  # the paper's CC-595K


def test_any_single_field_can_be_overridden() -> None:
    recipe = recipes.load("llava-instruct-158k", ["generate.model=gpt-4o", "mix.conversation=100",
                                                  "coco.split=train2017", "coco.images=118287"])
    assert recipe.generate["model"] == "gpt-4o" and recipe.generate["mode"] == "batch"
    assert recipe.mix is not None and recipe.mix.targets["conversation"] == 100
    assert recipe.mix.targets["complex_reasoning"] == 77_000 and recipe.coco.split == "train2017"
    values = recipes.pipeline_values(recipe)
    assert values["ingest"]["splits"] == ["train2017"] and values["generate"]["model"] == "gpt-4o"
    whole_mix = recipes.load("llava-instruct-158k", ["mix=conversation=0.5"])
    assert whole_mix.mix is not None and whole_mix.mix.targets == {"conversation": 0.5}


@pytest.mark.parametrize(("override", "message"), [
    ("generate.mode=sometimes", r"generate\.mode: Input should be 'online' or 'batch'"),
    ("generate.modle=gpt-4o", r"generate\.modle: Extra inputs are not permitted"),
    ("mix.chat=3", r"unknown sample type 'chat'"),
    ("mix.conversation=90000", r"conversation=90,000 asks for more images than the 82,783 there are"),
    ("coco.images=0", r"coco\.images: Input should be greater than or equal to 1"),
    ("generate.prompt_set=x", r"must not set \['prompt_set'\]"),
    ("train.config", r"must look like section\.field=value"),
])
def test_a_bad_override_is_one_line_naming_the_field(override: str, message: str) -> None:
    with pytest.raises(recipes.RecipeError, match=message) as error:
        recipes.load("llava-instruct-158k", [override])
    assert "\n" not in str(error.value)
    code, output = cli("recipe", "show", "llava-instruct-158k", "--set", override)
    assert code == 2 and re.search(message, output)


def test_an_unknown_recipe_lists_the_known_ones_and_a_file_of_ones_own_works(tmp_path: Path) -> None:
    with pytest.raises(recipes.RecipeError, match="choose one of demo, llava-instruct-158k"):
        recipes.load("llava-158k")
    own = tmp_path / "mine.yaml"
    own.write_text("name: mine\ndescription: a tenth of the paper\ncoco: {images: 1000}\n"
                   "mix: {conversation: 0.1, complex_reasoning: 0.2, seed: 3}\n"
                   "train: {config: tiny, stage1_data: pairs, stage2_data: export}\n")
    recipe = recipes.load(str(own))
    assert recipe.mix is not None and recipe.mix.counts(1000) == {"conversation": 100, "complex_reasoning": 200}
    with pytest.raises(ValidationError, match="choose one of"):
        PipelineParams(recipe="llava-158k")


def test_pipeline_params_apply_the_recipe_under_the_given_fields() -> None:
    params = PipelineParams(recipe="llava-instruct-158k", generate=GenerateParams(model="gpt-4o-mini"),
                            curate={"export_dir": "elsewhere"})
    assert params.generate.model == "gpt-4o-mini"  # given: wins
    assert params.generate.mode == "batch" and params.generate.output_format == "llava-text"  # the recipe's
    assert params.generate.mix is not None and params.generate.mix.targets["complex_reasoning"] == 77_000
    assert params.ingest.splits == ["train2014"] and params.curate.export_dir == "elsewhere"
    assert params.train is None  # the paper's stage 1 needs downloads first: not part of `vistune run`
    again = PipelineParams.model_validate(json.loads(params.model_dump_json()))  # as Prefect stores and reloads
    assert again == params


def test_recipe_list_and_show_print_every_setting() -> None:
    code, listing = cli("recipe", "list")
    assert code == 0 and "llava-instruct-158k" in listing and "58,000 / 23,000 / 77,000" in listing
    code, shown = cli("recipe", "show", "llava-instruct-158k")
    assert code == 0
    for expected in ("train2014 (82,783 images)", "58,000 images", "23,000 images", "77,000 images",
                     "llava-text", "gpt-4", "batch", "training/configs/llava_v1_7b.yaml",
                     "LLaVA-CC3M-Pretrain-595K", "stage2.data=data/export/llava_instruct.json", "llava-bench",
                     "data/LLaVA/playground/data/prompts"):
        assert expected in shown, expected


def test_estimate_recipe_prices_every_model_without_coco(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VISTUNE_DB", str(tmp_path / "none.duckdb"))  # no database, no COCO download
    code, output = cli("estimate", "--recipe", "llava-instruct-158k")
    assert code == 0, output
    assert "bundled sample COCO" in output and "few-shot answers" in output  # the assumptions are stated
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if len(cells) == 7 and cells[0] in priced_models():
            rows[cells[0]] = [float(c.replace(",", "")) for c in cells[1:]]
    assert set(rows) == set(priced_models())
    for model, (requests, prompt, cached, completion, online, batch) in rows.items():
        assert requests == 158_000 and prompt > 1000 * requests and completion > 100 * requests
        assert batch == pytest.approx(online * batch_discount(), abs=0.02)
        uncached_price = pricing.cost_usd(model, int(prompt), int(completion))
        assert online <= uncached_price + 0.01 and (cached > 0) == (online < uncached_price - 0.01)
    assert not (tmp_path / "none.duckdb").exists()  # it wrote nothing
    code, output = cli("estimate", "--recipe", "llava-instruct-158k", "--images", "1000")
    assert code == 2 and "asks for more images than the 1,000 there are" in output


def _vistune(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "VISTUNE_DB")}
    return subprocess.run([VISTUNE, *args], cwd=cwd, env={**base, "COLUMNS": "200", **env}, capture_output=True,
                          text=True, timeout=600)


def _answers(export: Path) -> list[str]:
    # The records' ids and instruction draws depend on response ids (new each run); the answers must not.
    records = json.loads((export / "llava_instruct.json").read_text())
    return sorted(json.dumps([r["image"], [t["value"] for t in r["conversations"] if t["from"] == "gpt"]])
                  for r in records)


def _exported_images(export: Path) -> set[str]:
    return {r["image"] for name in ("llava_instruct.json", "llava_pretrain.json")
            for r in json.loads((export / name).read_text())}


def _sections(report: str, titles: tuple[str, ...]) -> dict[str, str]:
    parts = re.split(r"^## ", report, flags=re.MULTILINE)
    return {p.split("\n", 1)[0]: p for p in parts if p.startswith(titles)}


# Everything the two runs make, the demo's held-out eval set (issue 11) included: both run `tasks.pipeline.STEPS`,
# whose eval-set step holds the recipe's set out before export.
PIPELINE_TABLES = ("images", "captions", "objects", "requests", "responses", "samples", "rejects", "duplicates",
                   "dataset", "eval_sets", "eval_images", "eval_questions", "eval_references", "eval_rejects")
REPORT_SECTIONS = ("Funnel", "Sample types", "Rounds", "Answer lengths", "Reject reasons", "Cost", "Evaluation cost",
                   "Dedup")


@pytest.mark.timeout(600)
def test_run_recipe_demo_matches_vistune_demo(tmp_path: Path) -> None:
    from tests.sim import SimConfig, start_simulator

    demo = _vistune(["demo", "--out", str(tmp_path / "demo"), "--no-train"], cwd=tmp_path)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    with start_simulator(SimConfig()) as sim:  # the demo starts the same simulator when no endpoint is set
        run = _vistune(["run", "--recipe", "demo", "--db", str(tmp_path / "run" / "vistune.duckdb"),
                        "--export-dir", str(tmp_path / "run" / "export"), "--base-url", sim.base_url], cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    dbs = {side: tmp_path / side / "vistune.duckdb" for side in ("demo", "run")}
    counts = {side: store.table_counts(db) for side, db in dbs.items()}
    assert {t: counts["demo"][t] for t in PIPELINE_TABLES} == {t: counts["run"][t] for t in PIPELINE_TABLES}
    assert counts["run"]["dataset"] > 0 and counts["run"]["eval_questions"] == 3
    per_type = "SELECT q.sample_type, q.model, count(*) AS n, count(r.response_id) AS answered FROM requests q " \
               "LEFT JOIN responses r USING (request_id) GROUP BY 1, 2 ORDER BY 1, 2"
    requested = {side: store.query(per_type, path=db) for side, db in dbs.items()}
    assert requested["demo"] == requested["run"]  # generation and the eval set's questions and references
    assert sum(r["n"] for r in requested["run"] if not r["sample_type"].startswith("eval:")) == 12
    reports = {side: (tmp_path / side / "export" / "report.md").read_text() for side in dbs}
    assert _sections(reports["demo"], REPORT_SECTIONS) == _sections(reports["run"], REPORT_SECTIONS)
    assert len(_sections(reports["run"], REPORT_SECTIONS)) == len(REPORT_SECTIONS)
    assert _answers(tmp_path / "demo" / "export") == _answers(tmp_path / "run" / "export")
    for side, db in dbs.items():  # the held-out image is in neither export
        held_out = {r["image"] for r in store.query(
            "SELECT i.split || '/' || i.file_name AS image FROM eval_images e JOIN images i USING (image_id)", path=db)}
        exported = _exported_images(tmp_path / side / "export")
        assert len(held_out) == 1 and exported and not held_out & exported, side


def test_the_demo_reads_its_settings_from_the_demo_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = recipes.RECIPES_DIR
    edited = tmp_path / "recipes"
    shutil.copytree(shipped, edited, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    demo = edited / "demo.toml"
    demo.write_text(demo.read_text().replace("[generate]\n", "[mix]\nconversation = 2\n\n[generate]\n"))
    monkeypatch.setattr(recipes, "RECIPES_DIR", edited)
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "VISTUNE_DB"):
        monkeypatch.delenv(name, raising=False)
    code, output = cli("demo", "--out", str(tmp_path / "out"), "--no-train")
    assert code == 0, output[-2000:]
    planned = store.query("SELECT sample_type, count(*) AS n FROM requests WHERE sample_type NOT LIKE 'eval:%' "
                          "GROUP BY 1", path=tmp_path / "out" / "vistune.duckdb")  # the demo's eval set aside
    assert [(r["sample_type"], r["n"]) for r in planned] == [("conversation", 2)]


def test_run_recipe_flags_and_set_override_the_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.pipeline

    seen: list[PipelineParams] = []

    class Stop(Exception):
        pass

    def capture(params: PipelineParams, return_state: bool = False) -> None:
        seen.append(params)
        raise Stop  # the flow itself is tested above: here only what `run` hands it

    monkeypatch.setattr(flows.pipeline, "pipeline_flow", capture)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "coco").mkdir(parents=True)
    result = CliRunner().invoke(get_app(), [
        "run", "--recipe", "llava-instruct-158k", "--model", "gpt-4o-mini", "--concurrency", "5",
        "--set", "mix.conversation=5", "--set", "mix.detail_description=0", "--set", "mix.complex_reasoning=0.5"])
    assert isinstance(result.exception, Stop), result.output
    params = seen[0]
    assert params.recipe == "llava-instruct-158k"
    assert params.generate.model == "gpt-4o-mini" and params.generate.concurrency == 5  # flags given
    assert params.generate.mode == "batch" and params.generate.output_format == "llava-text"  # the recipe's
    assert params.generate.mix is not None and params.generate.mix.targets == {
        "conversation": 5, "detail_description": 0, "complex_reasoning": 0.5}  # --set
    assert params.ingest.coco_dir == "data/coco" and params.ingest.splits == ["train2014"]
    assert params.curate.export_dir == "data/export"
    code, output = cli("run", "--set", "generate.model=gpt-4o")
    assert code != 0 and "give --recipe NAME too" in output
