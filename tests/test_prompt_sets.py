"""Prompt sets: vistune's layout with its manifest, LLaVA's released layout byte for byte, versions, errors, wiring.

The LLaVA-layout set is `tests/fixtures/llava_prompts/`: LLaVA's file names with texts invented for these tests.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flows.cli import get_app
from schemas.flow_params import GenerateParams
from schemas.samples import SAMPLE_TYPES
from tasks import pipeline, store
from tasks.ingest.coco import ingest
from tasks.prompting import plan, prompts
from tasks.prompting.prompts import (
    ImageContext,
    ObjectBox,
    PromptFileError,
    build_messages,
    load_contexts,
    load_prompt_set,
    load_template,
    prompt_versions,
)

LLAVA_SET = Path(__file__).resolve().parent / "fixtures" / "llava_prompts"
CROWD_IMAGE = 990000000003  # tasks/ingest/sample_coco image with two dogs and a crowd box


@pytest.fixture(autouse=True)
def fresh_caches():
    prompts.clear_caches()
    yield
    prompts.clear_caches()


@pytest.fixture(scope="module")
def sample_db(tmp_path_factory: pytest.TempPathFactory, sample_coco: Path) -> Path:
    path = tmp_path_factory.mktemp("prompt_sets") / "sample.duckdb"
    ingest(sample_coco, "train2017", path)
    return path


def context() -> ImageContext:
    return ImageContext(
        image_id=7, width=640, height=480,
        captions=("A man rides a horse on a beach.", "  A rider\non horseback  by the sea. "),
        objects=(ObjectBox("person", (0.6814, 0.24151, 0.77404, 0.694)), ObjectBox("horse", (0.5, 0.4, 0.9, 1.0)),
                 ObjectBox("person", (0.0, 0.5, 1.0, 1.0), crowd=True)),
    )


def file_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8").removesuffix("\n")


def copy_set(tmp_path: Path, source: Path = LLAVA_SET) -> Path:
    folder = tmp_path / "set"
    shutil.copytree(source, folder)
    return folder


# ---------------------------------------------------------------- LLaVA's layout
@pytest.mark.parametrize("type_name", list(SAMPLE_TYPES))
def test_llava_layout_sends_the_files_byte_for_byte(type_name: str) -> None:
    messages, version = build_messages(context(), type_name, "llava-text", LLAVA_SET)
    folder = LLAVA_SET / type_name
    expected = [("system", file_text(folder / "system_message.txt"))]
    for n in ("000", "001"):
        expected += [("user", file_text(folder / f"{n}_caps.txt")), ("assistant", file_text(folder / f"{n}_conv.txt"))]
    assert [(m["role"], m["content"]) for m in messages[:-1]] == expected
    assert version == load_template(type_name, LLAVA_SET).version
    # trailing spaces inside an answer survive: nothing is re-rendered
    if type_name == "conversation":
        assert "much better than dry sand. \n\n" in messages[2]["content"]


def test_llava_layout_writes_the_context_the_way_llava_did() -> None:
    captions = "A man rides a horse on a beach.\nA rider on horseback by the sea."
    boxes = "person: [0.681, 0.242, 0.774, 0.694]\nhorse: [0.5, 0.4, 0.9, 1.0]\nperson: [0.0, 0.5, 1.0, 1.0]"
    assert build_messages(context(), "conversation", "llava-text", LLAVA_SET)[0][-1]["content"] == captions
    for type_name in ("detail_description", "complex_reasoning"):
        last = build_messages(context(), type_name, "llava-text", LLAVA_SET)[0][-1]
        assert last == {"role": "user", "content": f"{captions}\n\n{boxes}"}  # no "(crowd)": LLaVA has no such mark
    # vistune's own set marks the crowd and explains the mark
    ours = build_messages(context(), "complex_reasoning", "structured")[0]
    assert ours[-1]["content"].endswith("person (crowd): [0.0, 0.5, 1.0, 1.0]")


def test_llava_layout_answers_in_llava_text_only() -> None:
    template = load_template("complex_reasoning", LLAVA_SET)
    assert template.layout == "llava" and template.output_formats == ("llava-text",)
    assert template.prompt_set == "llava_prompts"
    with pytest.raises(PromptFileError, match=r"llava-text only, not structured: pass --format llava-text"):
        build_messages(context(), "complex_reasoning", "structured", LLAVA_SET)


def test_llava_few_shots_are_parsed_for_checks() -> None:
    template = load_template("conversation", LLAVA_SET)
    assert [len(e.output.rounds) for e in template.examples] == [2, 1]
    assert all(isinstance(e.context, str) and e.answer_text for e in template.examples)


# ---------------------------------------------------------------- versions
def test_versions_are_content_hashes_that_never_collide_across_sets(tmp_path: Path) -> None:
    ours, llava = prompt_versions(), prompt_versions(LLAVA_SET)
    assert set(ours) == set(llava) == set(SAMPLE_TYPES)
    assert not set(ours.values()) & set(llava.values())
    copy = copy_set(tmp_path)
    assert prompt_versions(copy) == llava  # the folder's place and name are no part of it
    path = copy / "detail_description" / "001_conv.txt"
    path.write_text(path.read_text() + " It is a quiet scene.")
    prompts.clear_caches()
    edited = prompt_versions(copy)
    assert edited["detail_description"] != llava["detail_description"]
    assert {t: v for t, v in edited.items() if t != "detail_description"} == {
        t: v for t, v in llava.items() if t != "detail_description"}


def test_manifest_chooses_context_fields_and_crowd_marks(tmp_path: Path) -> None:
    folder = copy_set(tmp_path)
    before = prompt_versions(folder)
    (folder / "prompt_set.toml").write_text(
        'name = "llava-boxes"\nmark_crowds = true\n[context]\nconversation = ["boxes", "captions"]\n')
    prompts.clear_caches()
    assert load_prompt_set(folder).name == "llava-boxes"
    last = build_messages(context(), "conversation", "llava-text", folder)[0][-1]["content"]
    assert last.endswith("\n\nperson: [0.681, 0.242, 0.774, 0.694]\nhorse: [0.5, 0.4, 0.9, 1.0]\n"
                         "person (crowd): [0.0, 0.5, 1.0, 1.0]")
    after = prompt_versions(folder)
    assert all(after[t] != before[t] for t in SAMPLE_TYPES)  # crowd marks change every box-seeing context


def test_vistune_set_has_a_manifest() -> None:
    pset = load_prompt_set()
    assert pset.name == "vistune" and (pset.path / prompts.MANIFEST).is_file()
    for type_name in SAMPLE_TYPES:
        template = load_template(type_name)
        assert template.layout == "vistune" and template.output_formats == ("structured", "llava-text")
        assert ("boxes" in template.context.fields) == SAMPLE_TYPES[type_name].sees_boxes


# ---------------------------------------------------------------- errors name the file
def _error(folder: Path, type_name: str = "conversation") -> str:
    prompts.clear_caches()
    with pytest.raises(PromptFileError) as info:
        build_messages(context(), type_name, "llava-text", folder)
    return str(info.value)


def test_a_few_shot_without_its_partner_names_the_file(tmp_path: Path) -> None:
    folder = copy_set(tmp_path)
    (folder / "conversation" / "001_conv.txt").unlink()
    message = _error(folder)
    assert "001_caps.txt has no 001_conv.txt beside it" in message


def test_an_answer_not_in_llava_text_names_the_file(tmp_path: Path) -> None:
    folder = copy_set(tmp_path)
    (folder / "complex_reasoning" / "000_conv.txt").write_text("Answer:\nno question first")
    message = _error(folder, "complex_reasoning")
    assert "complex_reasoning/000_conv.txt: not a complex_reasoning answer in LLaVA's text format" in message


def test_a_type_without_few_shots_or_system_names_the_folder(tmp_path: Path) -> None:
    folder = copy_set(tmp_path)
    for path in (folder / "conversation").glob("00*"):
        path.unlink()
    assert "conversation: no few-shot pairs" in _error(folder)
    (folder / "conversation" / "system_message.txt").unlink()
    assert "conversation/system.md is missing" in _error(folder)  # neither layout: vistune's files are asked for
    shutil.rmtree(folder / "conversation")
    assert "has no conversation/ folder; it has detail_description, complex_reasoning" in _error(folder)


def test_bad_manifests_name_the_file_and_key(tmp_path: Path) -> None:
    folder = copy_set(tmp_path)
    manifest = folder / "prompt_set.toml"
    cases = {
        "name = ": "prompt_set.toml: not valid TOML",
        "colour = 'red'": "prompt_set.toml: colour: Extra inputs are not permitted",
        "output_formats = ['xml']": "prompt_set.toml: output_formats.0: Input should be 'structured' or 'llava-text'",
        "[context]\ncaptioning = ['captions']": "context.captioning: unknown sample type",
        "[context]\nconversation = ['boxes']": "context.conversation: ['boxes'] has no 'captions'",
        "[context.conversation]\ndetail = 'high'": "detail = 'high' needs image = true",
        "output_formats = ['structured']": "cannot serve conversation/, which is in LLaVA's layout",
    }
    for text, expected in cases.items():
        manifest.write_text(text + "\n")
        assert expected in _error(folder), text


def test_a_missing_set_or_mixed_layout_is_explained(tmp_path: Path) -> None:
    assert "is not a folder" in _error(tmp_path / "nowhere")
    assert "has no sample-type folder" in _error(tmp_path)
    folder = copy_set(tmp_path)
    (folder / "conversation" / "system.md").write_text("Another system text.")
    assert "holds both system.md (vistune's layout) and system_message.txt (LLaVA's): keep one" in _error(folder)


# ---------------------------------------------------------------- plan, pipeline, CLI
def test_plan_records_each_sets_version_and_both_sets_plan(sample_db: Path, tmp_path: Path) -> None:
    db = tmp_path / "plan.duckdb"
    shutil.copy(sample_db, db)
    ours = plan.plan_requests(db, sample_types=["complex_reasoning"], model="gpt-4o", output_format="llava-text")
    theirs = plan.plan_requests(db, sample_types=["complex_reasoning"], model="gpt-4o", output_format="llava-text",
                                prompt_set=LLAVA_SET)
    assert ours.planned_new == theirs.planned_new == 4 and not set(ours.request_ids) & set(theirs.request_ids)
    rows = store.query("SELECT prompt_version, messages FROM requests WHERE request_id IN ({})".format(
        ", ".join(f"'{r}'" for r in theirs.request_ids)), path=db)
    assert {r["prompt_version"] for r in rows} == {prompt_versions(LLAVA_SET)["complex_reasoning"]}
    system = file_text(LLAVA_SET / "complex_reasoning" / "system_message.txt")
    assert all(json.loads(r["messages"])[0]["content"] == system for r in rows)
    again = plan.plan_requests(db, sample_types=["complex_reasoning"], model="gpt-4o", output_format="llava-text",
                               prompt_set=str(LLAVA_SET))
    assert again.planned_new == 0 and again.request_ids == theirs.request_ids


def test_the_generate_step_carries_its_prompt_set_to_planning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_plan(*args: Any, **kwargs: Any) -> plan.PlanResult:
        seen.update(kwargs)
        return plan.PlanResult()

    monkeypatch.setattr(plan, "plan_requests", fake_plan)
    params = GenerateParams(db_path=str(tmp_path / "g.duckdb"), base_url="http://127.0.0.1:9/v1",
                            output_format="llava-text", prompt_set=str(LLAVA_SET))
    assert GenerateParams.model_validate(params.model_dump()).prompt_set == str(LLAVA_SET)  # a flow parameter
    pipeline.run_steps([pipeline.Generate], params, pipeline.Context(db=tmp_path / "g.duckdb"))
    assert seen["prompt_set"] == str(LLAVA_SET)


def test_cli_prompts_show_and_list_take_a_prompt_set(sample_db: Path) -> None:
    runner = CliRunner()
    show = runner.invoke(get_app(), ["prompts", "show", "--image-id", str(CROWD_IMAGE), "--type",
                                     "complex_reasoning", "--prompt-set", str(LLAVA_SET), "--db", str(sample_db),
                                     "--model", "gpt-4", "--json"])
    assert show.exit_code == 0, show.output
    with store.read(sample_db) as con:
        ctx = load_contexts(con, [CROWD_IMAGE])[CROWD_IMAGE]
    assert json.loads(show.output) == build_messages(ctx, "complex_reasoning", "llava-text", LLAVA_SET)[0]
    wrong = runner.invoke(get_app(), ["prompts", "show", "--image-id", str(CROWD_IMAGE), "--type", "conversation",
                                      "--format", "structured", "--prompt-set", str(LLAVA_SET), "--db",
                                      str(sample_db)])
    assert wrong.exit_code == 2 and "pass --format llava-text" in wrong.output
    listed = runner.invoke(get_app(), ["prompts", "list", "--prompt-set", str(LLAVA_SET), "--model", "gpt-4"])
    assert listed.exit_code == 0, listed.output
    assert "prompt set llava_prompts" in listed.output
    for name, version in prompt_versions(LLAVA_SET).items():
        assert f"{name}: prompt_version {version} · llava layout" in listed.output


def test_cli_estimate_takes_a_prompt_set(sample_db: Path, tmp_path: Path) -> None:
    db = tmp_path / "est.duckdb"
    shutil.copy(sample_db, db)
    runner = CliRunner()
    args = ["estimate", "--db", str(db), "--model", "gpt-4o", "--prompt-set", str(LLAVA_SET)]
    ok = runner.invoke(get_app(), [*args, "--format", "llava-text"])
    assert ok.exit_code == 0, ok.output
    assert "requests to send" in ok.output
    wrong = runner.invoke(get_app(), args)  # the default format, structured, is not one this set offers
    assert wrong.exit_code == 2 and "pass --format llava-text" in wrong.output
    assert "--prompt-set" in runner.invoke(get_app(), ["generate", "--help"]).output
