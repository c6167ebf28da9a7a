"""Prompts: context rendering, box formatting, templates, message order, goldens, token counts, CLI.

Golden files live in `tests/golden/`. After an intended prompt change, regenerate them with
`VISTUNE_UPDATE_GOLDEN=1 pytest tests/test_prompts.py` and review the diff before committing. A prompt
golden whose messages changed while its `prompt_version` did not is a rendering change without a
`RENDER_VERSION` bump: that fails even with `VISTUNE_UPDATE_GOLDEN=1`.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
from pathlib import Path

import pytest
import tiktoken
from typer.testing import CliRunner

from flows.cli import get_app
from schemas.samples import SAMPLE_TYPES
from tasks import store
from tasks.ingest.coco import ingest
from tasks.llm import parsers
from tasks.prompting import prompts, tokens
from tasks.prompting.formats import OUTPUT_FORMATS, OutputFormatError, parse, render, sample_kind
from tasks.prompting.prompts import (
    ImageContext,
    ObjectBox,
    PromptFileError,
    build_messages,
    format_number,
    format_object,
    load_contexts,
    load_template,
    render_context,
)

GOLDEN = Path(__file__).resolve().parent / "golden"
SAMPLE_CROWD_IMAGE = 990000000003  # tasks/ingest/sample_coco image with two dogs and a crowd box
COCO_MINI_FIRST_TRAIN = 493652  # first image of coco-mini's instances_train2017.json
COCO_MINI_TWO_CROWDS = 174375  # the train2017 image with two crowd boxes


def assert_golden(name: str, text: str, folder: Path = GOLDEN) -> None:
    """Compare with `tests/golden/<name>`; `VISTUNE_UPDATE_GOLDEN=1` rewrites the file instead."""
    path = folder / name
    if os.environ.get("VISTUNE_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    if not path.exists():
        pytest.fail(f"golden file {path} is missing: create it with VISTUNE_UPDATE_GOLDEN=1 and review it")
    expected = path.read_text(encoding="utf-8")
    if text != expected:
        diff = "".join(difflib.unified_diff(
            expected.splitlines(keepends=True), text.splitlines(keepends=True), str(path), "actual", n=2))
        pytest.fail(f"output differs from {path} (if intended: VISTUNE_UPDATE_GOLDEN=1, then review):\n{diff}")


def messages_as_text(messages: list[dict[str, str]], version: str) -> str:
    """A reviewable rendering of a message list for golden files."""
    parts = [f"prompt_version: {version}\n"]
    for i, message in enumerate(messages, 1):
        parts.append(f"\n===== [{i}/{len(messages)}] {message['role']} =====\n{message['content']}\n")
    return "".join(parts)


def assert_prompt_golden(name: str, messages: list[dict[str, str]], version: str, folder: Path = GOLDEN) -> None:
    """`assert_golden` for a prompt, which also fails when the messages changed but `prompt_version` did not.

    The version hashes the prompt files and `RENDER_VERSION`; same version with other messages means the
    rendering code changed without a bump, and requests already planned would not be re-planned.
    """
    path = folder / name
    text = messages_as_text(messages, version)
    if path.exists():
        expected = path.read_text(encoding="utf-8")
        recorded_version = expected.partition("\n")[0].removeprefix("prompt_version: ")
        if recorded_version == version and text != expected:
            diff = "".join(difflib.unified_diff(
                expected.splitlines(keepends=True), text.splitlines(keepends=True), str(path), "actual", n=2))
            pytest.fail(
                f"the messages rendered for {name} changed but prompt_version {version} did not: the rendering code "
                f"changed. Bump RENDER_VERSION (now {prompts.RENDER_VERSION}) in tasks/prompting/prompts.py so the "
                "new prompts get a new prompt_version, then rewrite the goldens with VISTUNE_UPDATE_GOLDEN=1 pytest "
                f"tests/test_prompts.py, review the diff and commit tests/golden/.\n{diff}")
    assert_golden(name, text, folder)


@pytest.fixture(scope="module")
def sample_db(tmp_path_factory: pytest.TempPathFactory, sample_coco: Path) -> Path:
    """The bundled sample, ingested once for this module."""
    path = tmp_path_factory.mktemp("prompts") / "sample.duckdb"
    ingest(sample_coco, "train2017", path)
    return path


@pytest.fixture(scope="module")
def coco_mini_db(tmp_path_factory: pytest.TempPathFactory, coco_mini: Path) -> Path:
    """coco-mini train2017, ingested once for this module."""
    path = tmp_path_factory.mktemp("prompts") / "coco_mini.duckdb"
    ingest(coco_mini, "train2017", path)
    return path


@pytest.fixture
def sample_context(sample_db: Path) -> ImageContext:
    with store.read(sample_db) as con:
        return load_contexts(con, [SAMPLE_CROWD_IMAGE])[SAMPLE_CROWD_IMAGE]


def hand_context(**overrides: object) -> ImageContext:
    fields = {
        "image_id": 7,
        "width": 640,
        "height": 480,
        "captions": ("A man rides a horse on a beach.", "  A rider\non horseback  by the sea. "),
        "objects": (
            ObjectBox("person", (0.6814, 0.24151, 0.77404, 0.694)),
            ObjectBox("horse", (0.5, 0.4, 0.9, 1.0)),
            ObjectBox("person", (0.0, 0.5, 1.0, 1.0), crowd=True),
        ),
    }
    fields.update(overrides)
    return ImageContext(**fields)  # type: ignore[arg-type]


# ---------------------------------------------------------------- box and context formatting
@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.0, "0.0"), (1.0, "1.0"), (0.5, "0.5"), (0.681, "0.681"), (0.68149, "0.681"), (1 / 3, "0.333"),
     (0.1 + 0.2, "0.3"), (-0.0, "0.0"), (0.0004, "0.0"), (0.9996, "1.0"), (2, "2.0")],
)
def test_format_number_writes_at_most_three_decimals_as_python_floats(value: float, expected: str) -> None:
    assert format_number(value) == expected


def test_format_object_matches_llava_style_and_marks_crowds() -> None:
    assert format_object(ObjectBox("person", (0.681, 0.242, 0.774, 0.694))) == "person: [0.681, 0.242, 0.774, 0.694]"
    assert format_object(ObjectBox("dining table", (0, 0.5, 1, 1))) == "dining table: [0.0, 0.5, 1.0, 1.0]"
    assert format_object(ObjectBox("person", (0, 0.5, 1, 1), crowd=True)) == "person (crowd): [0.0, 0.5, 1.0, 1.0]"


def test_render_context_shows_boxes_only_to_types_that_see_them() -> None:
    ctx = hand_context()
    captions_only = "A man rides a horse on a beach.\nA rider on horseback by the sea."
    assert render_context(ctx, "conversation") == captions_only
    boxes = ("person: [0.681, 0.242, 0.774, 0.694]\nhorse: [0.5, 0.4, 0.9, 1.0]\n"
             "person (crowd): [0.0, 0.5, 1.0, 1.0]")
    for name in ("detail_description", "complex_reasoning"):
        assert SAMPLE_TYPES[name].sees_boxes
        assert render_context(ctx, name) == f"{captions_only}\n\n{boxes}"


def test_render_context_without_objects_has_no_trailing_block() -> None:
    assert render_context(hand_context(objects=()), "detail_description").endswith("by the sea.")


def test_render_context_rejects_an_image_without_captions() -> None:
    with pytest.raises(ValueError, match="image 7 has no captions"):
        render_context(hand_context(captions=(" ", "")), "conversation")


# ---------------------------------------------------------------- loading contexts from the store
class CountingConnection:
    """Wraps a DuckDB connection and counts `execute` calls (to check that loading is bulk)."""

    def __init__(self, con: object) -> None:
        self.con = con
        self.calls = 0

    def execute(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        return self.con.execute(*args, **kwargs)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.con, name)


def test_load_contexts_is_bulk_ordered_and_skips_unknown_ids(sample_db: Path) -> None:
    with store.read(sample_db) as con:
        counting = CountingConnection(con)
        everything = load_contexts(counting, None)  # type: ignore[arg-type]
        assert counting.calls <= 3
        some = load_contexts(con, [SAMPLE_CROWD_IMAGE, 123456789])
        assert load_contexts(con, []) == {}
        caption_rows = con.execute(
            "SELECT caption FROM captions WHERE image_id = ? ORDER BY caption_id", [SAMPLE_CROWD_IMAGE]).fetchall()
        object_rows = con.execute(
            "SELECT category, x1, y1, x2, y2, iscrowd FROM objects WHERE image_id = ? ORDER BY object_id",
            [SAMPLE_CROWD_IMAGE]).fetchall()
        n_images = con.execute("SELECT count(*) FROM images").fetchall()[0][0]
    assert len(everything) == n_images == 4
    assert list(some) == [SAMPLE_CROWD_IMAGE]
    ctx = some[SAMPLE_CROWD_IMAGE]
    assert ctx == everything[SAMPLE_CROWD_IMAGE]
    assert (ctx.width, ctx.height) == (640, 427)
    assert list(ctx.captions) == [r[0] for r in caption_rows]
    assert [(o.category, *o.box, o.crowd) for o in ctx.objects] == [tuple(r) for r in object_rows]
    assert any(o.crowd for o in ctx.objects)


def test_load_contexts_many_images_in_three_queries(db_path: Path) -> None:
    from schemas.tables import CaptionRow, ImageRow, ObjectRow

    n = 3000
    with store.write(db_path) as con:
        store.insert_rows(con, ImageRow, [
            {"image_id": i, "split": "train2017", "file_name": f"{i}.jpg", "width": 640, "height": 480,
             "coco_root": "/x"} for i in range(n)])
        store.insert_rows(con, CaptionRow, [
            {"caption_id": 10 * i + k, "image_id": i, "caption": f"caption {k} of {i}"}
            for i in range(n) for k in (2, 1, 0)])  # inserted out of order on purpose
        store.insert_rows(con, ObjectRow, [
            {"object_id": 10 * i + k, "image_id": i, "category": f"cat{k}", "x1": 0.1, "y1": 0.2, "x2": 0.3,
             "y2": 0.4, "area": 1.0, "iscrowd": k == 1} for i in range(0, n, 2) for k in (1, 0)])
    with store.read(db_path) as con:
        counting = CountingConnection(con)
        contexts = load_contexts(counting, list(range(0, n, 3)))  # type: ignore[arg-type]
    assert counting.calls == 3
    assert len(contexts) == len(range(0, n, 3))
    assert contexts[6].captions == ("caption 0 of 6", "caption 1 of 6", "caption 2 of 6")
    assert [(o.category, o.crowd) for o in contexts[6].objects] == [("cat0", False), ("cat1", True)]
    assert contexts[3].objects == ()


# ---------------------------------------------------------------- templates and messages
@pytest.mark.parametrize("type_name", list(SAMPLE_TYPES))
@pytest.mark.parametrize("output_format", OUTPUT_FORMATS)
def test_messages_are_static_prefix_then_the_image(type_name: str, output_format: str) -> None:
    template = load_template(type_name)
    a, version_a = build_messages(hand_context(), type_name, output_format)
    other = hand_context(image_id=8, captions=("A cat sleeps on a sofa.",), objects=())
    b, version_b = build_messages(other, type_name, output_format)
    assert version_a == version_b == template.version
    assert len(a) == 2 + 2 * len(template.examples) and len(template.examples) >= 2
    assert [m["role"] for m in a] == ["system"] + ["user", "assistant"] * len(template.examples) + ["user"]
    assert a[:-1] == b[:-1], "everything before the last message must be shared, for prompt caching"
    assert a[-1]["content"] == render_context(hand_context(), type_name)
    assert b[-1]["content"] == "A cat sleeps on a sofa."
    a[0]["content"] = "mutated"
    assert build_messages(hand_context(), type_name, output_format)[0][0]["content"] != "mutated"


@pytest.mark.parametrize("type_name", list(SAMPLE_TYPES))
@pytest.mark.parametrize("output_format", OUTPUT_FORMATS)
def test_assistant_examples_are_in_the_requested_format(type_name: str, output_format: str) -> None:
    template = load_template(type_name)
    messages, _ = build_messages(hand_context(), type_name, output_format)
    assistants = [m["content"] for m in messages if m["role"] == "assistant"]
    for content, example in zip(assistants, template.examples, strict=True):
        assert parse(type_name, output_format, content) == example.output
        assert content.lstrip().startswith("{") == (output_format == "structured")


def test_every_sample_kind_has_a_registered_parser() -> None:
    expected = {f"{t}/{f}" for t in SAMPLE_TYPES for f in OUTPUT_FORMATS}
    assert {sample_kind(t, f) for t in SAMPLE_TYPES for f in OUTPUT_FORMATS} == expected
    assert expected <= set(parsers.kinds())
    with pytest.raises(ValueError, match="unknown output format 'xml'"):
        sample_kind("conversation", "xml")


@pytest.mark.parametrize("type_name", list(SAMPLE_TYPES))
@pytest.mark.parametrize("output_format", OUTPUT_FORMATS)
def test_registered_parser_reads_the_few_shot_answers_and_rejects_bad_ones(type_name: str, output_format: str) -> None:
    parser = parsers.parser_for(sample_kind(type_name, output_format))
    for example in load_template(type_name).examples:
        assert parser(render(example.output, output_format)) == example.output
    assert issubclass(OutputFormatError, parsers.OutputError)
    # empty, and (except for a plain-text description, which any text is) a shape the type does not have
    bad = [None, "  "] + ([] if (type_name, output_format) == ("detail_description", "llava-text")
                          else ['{"text": "no"}' if output_format == "structured" else "Answer:\nno question"])
    for content in bad:
        with pytest.raises(parsers.OutputError):
            parser(content)


@pytest.mark.parametrize("type_name", list(SAMPLE_TYPES))
@pytest.mark.parametrize("output_format", OUTPUT_FORMATS)
def test_shared_prefix_is_long_enough_for_provider_prompt_caching(type_name: str, output_format: str) -> None:
    # OpenAI caches prefixes from 1,024 tokens; o200k models count a few percent below cl100k, hence the margin.
    messages, _ = build_messages(hand_context(), type_name, output_format)
    prefix = tokens.count_message_tokens(messages[:-1], "my-local-llama") - tokens.REPLY_PRIMING
    assert tokens.encoding_name("my-local-llama") == tokens.OFFLINE_ENCODING
    assert prefix >= 1100


@pytest.mark.parametrize("type_name", list(SAMPLE_TYPES))
def test_system_text_says_how_to_format(type_name: str) -> None:
    template = load_template(type_name)
    structured = template.system_text("structured")
    text = template.system_text("llava-text")
    assert structured.startswith(template.system) and text.startswith(template.system)
    assert "JSON" in structured and "JSON" not in text
    if type_name == "detail_description":
        assert "plain text" in text and "===" not in text
    else:
        assert "Question:" in text and "===" in text and "Answer:" in text
    assert ("bounding box" in template.system) == SAMPLE_TYPES[type_name].sees_boxes
    assert "Never mention" in template.system


@pytest.mark.parametrize("type_name", list(SAMPLE_TYPES))
def test_example_contexts_and_answers_follow_the_rules(type_name: str) -> None:
    template = load_template(type_name)
    for context, output, answer_text in template.examples:
        assert isinstance(output, SAMPLE_TYPES[type_name].output_model) and answer_text is None
        assert isinstance(context, ImageContext) and len(context.captions) == 5
        assert bool(context.objects) == ("boxes" in template.context.fields) == SAMPLE_TYPES[type_name].sees_boxes
        answer = output.model_dump_json().lower()
        for banned in ("caption", "bounding box", "coordinate", "description says", "0."):
            assert banned not in answer, f"{type_name} example mentions {banned!r}"


def test_reasoning_examples_ask_without_giving_the_picture_away() -> None:
    # The paper's questions are content-free ("What is unusual about this photo?"): the answer names what is shown.
    for i, example in enumerate(load_template("complex_reasoning").examples):
        question = example.output.question.lower()
        named = {o.category for o in example.context.objects} - {"person"}  # "the person here" reveals nothing
        assert not [c for c in named if c in question], f"example {i} names what the picture shows: {question!r}"
        assert len(question.split()) <= 12
        assert len(example.output.answer.split()) >= 120


def test_conversation_examples_vary_rounds_and_answer_hard_questions_at_length() -> None:
    examples = load_template("conversation").examples
    assert 2 <= len(examples) <= 3
    assert len({len(e.output.rounds) for e in examples}) == len(examples)  # no fixed number of rounds
    assert min(len(e.output.rounds) for e in examples) == 1
    for i, example in enumerate(examples):
        longest = max(len(r.answer.split()) for r in example.output.rounds)
        assert 150 <= longest <= 350, f"example {i}: its hard answer has {longest} words"
    system = load_template("conversation").system
    assert "3 to 5" not in system and "One round is a complete conversation" in system


@pytest.mark.parametrize("type_name", list(SAMPLE_TYPES))
@pytest.mark.parametrize("output_format", OUTPUT_FORMATS)
def test_example_answers_pass_curation(type_name: str, output_format: str) -> None:
    """The ideal answers we show the model must survive our own validation and content rules."""
    from tasks.curation import validate

    for i, example in enumerate(load_template(type_name).examples):
        output = example.output
        result = validate.validate_output(type_name, output_format, render(output, output_format), "stop")
        assert result.rejects == [], f"{type_name} example {i} is rejected: {result.rejects}"
        assert result.output == output


def copy_prompts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "prompts"
    shutil.copytree(prompts.PROMPTS_DIR, folder)
    monkeypatch.setattr(prompts, "PROMPTS_DIR", folder)
    prompts.clear_caches()
    return folder


@pytest.fixture
def clear_prompt_caches():
    yield
    prompts.clear_caches()


def test_version_is_a_content_hash_of_the_prompt_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clear_prompt_caches: None
) -> None:
    original = {name: load_template(name).version for name in SAMPLE_TYPES}
    assert len(set(original.values())) == 3
    folder = copy_prompts(tmp_path, monkeypatch)
    assert {name: load_template(name).version for name in SAMPLE_TYPES} == original  # same bytes, same version
    system = folder / "complex_reasoning" / "format_llava-text.md"
    system.write_text(system.read_text() + "\nOne more sentence.\n")
    prompts.clear_caches()
    assert load_template("complex_reasoning").version != original["complex_reasoning"]
    assert load_template("conversation").version == original["conversation"]
    messages, version = build_messages(hand_context(), "complex_reasoning", "llava-text")
    assert version == load_template("complex_reasoning").version
    assert messages[0]["content"].endswith("One more sentence.")


def test_bad_example_names_the_file_and_example(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clear_prompt_caches: None
) -> None:
    folder = copy_prompts(tmp_path, monkeypatch)
    path = folder / "conversation" / "examples.json"
    examples = json.loads(path.read_text())
    examples[1]["output"]["rounds"] = []
    path.write_text(json.dumps(examples))
    with pytest.raises(PromptFileError, match=r"examples\.json example 1: output is not a valid conversation"):
        load_template("conversation")
    (folder / "detail_description" / "system.md").unlink()
    with pytest.raises(PromptFileError, match=r"detail_description/system\.md is missing"):
        load_template("detail_description")


def test_unknown_type_and_format_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown sample type 'captioning'"):
        build_messages(hand_context(), "captioning", "structured")
    with pytest.raises(ValueError, match="unknown output format 'xml'"):
        build_messages(hand_context(), "conversation", "xml")


# ---------------------------------------------------------------- goldens
@pytest.mark.parametrize("type_name", list(SAMPLE_TYPES))
@pytest.mark.parametrize("output_format", OUTPUT_FORMATS)
def test_golden_prompt_of_a_sample_image(sample_context: ImageContext, type_name: str, output_format: str) -> None:
    messages, version = build_messages(sample_context, type_name, output_format)
    assert_prompt_golden(f"prompt_{SAMPLE_CROWD_IMAGE}_{type_name}_{output_format}.txt", messages, version)


def test_render_change_without_a_render_version_bump_fails_the_golden(
    sample_context: ImageContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clear_prompt_caches: None
) -> None:
    name = f"prompt_{SAMPLE_CROWD_IMAGE}_detail_description_llava-text.txt"
    shutil.copy(GOLDEN / name, tmp_path / name)  # a copy: update mode below must never touch the real goldens
    assert_prompt_golden(name, *build_messages(sample_context, "detail_description", "llava-text"), tmp_path)
    # a rendering change (crowd marker) with the same prompt files and RENDER_VERSION: same version, other text
    monkeypatch.setattr(prompts, "CROWD_MARK", " [crowd]")
    prompts._static_messages.cache_clear()
    messages, version = build_messages(sample_context, "detail_description", "llava-text")
    monkeypatch.setenv("VISTUNE_UPDATE_GOLDEN", "1")  # updating must not hide it
    with pytest.raises(pytest.fail.Exception, match=r"changed but prompt_version \w+ did not.*Bump RENDER_VERSION"):
        assert_prompt_golden(name, messages, version, tmp_path)
    assert (tmp_path / name).read_text(encoding="utf-8") == (GOLDEN / name).read_text(encoding="utf-8")
    # bumping RENDER_VERSION gives every type a new prompt_version; the golden then needs a plain update
    old_versions = prompts.prompt_versions()
    monkeypatch.setattr(prompts, "RENDER_VERSION", prompts.RENDER_VERSION + 1)
    prompts.clear_caches()
    new_versions = prompts.prompt_versions()
    assert all(new_versions[t] != old_versions[t] for t in SAMPLE_TYPES)
    messages, version = build_messages(sample_context, "detail_description", "llava-text")
    monkeypatch.delenv("VISTUNE_UPDATE_GOLDEN")
    with pytest.raises(pytest.fail.Exception, match="if intended: VISTUNE_UPDATE_GOLDEN=1"):
        assert_prompt_golden(name, messages, version, tmp_path)


@pytest.mark.coco_mini
@pytest.mark.parametrize("image_id", [COCO_MINI_FIRST_TRAIN, COCO_MINI_TWO_CROWDS])
def test_golden_context_of_coco_mini_images(coco_mini_db: Path, coco_mini: Path, image_id: int) -> None:
    with store.read(coco_mini_db) as con:
        ctx = load_contexts(con, [image_id])[image_id]
    instances = json.loads((coco_mini / "annotations" / "instances_train2017.json").read_text())
    annotations = [a for a in instances["annotations"] if a["image_id"] == image_id]
    assert len(ctx.objects) == len(annotations) and len(ctx.captions) == 5
    assert sum(o.crowd for o in ctx.objects) == sum(a["iscrowd"] for a in annotations)
    assert render_context(ctx, "conversation") == "\n".join(" ".join(c.split()) for c in ctx.captions)
    assert_golden(f"context_coco_mini_{image_id}.txt", render_context(ctx, "detail_description") + "\n")


# ---------------------------------------------------------------- token counts
def test_token_counts_use_the_offline_cl100k_encoding_when_the_model_encoding_is_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_get_encoding = tiktoken.get_encoding

    def offline_only(name: str) -> tiktoken.Encoding:
        if name != tokens.OFFLINE_ENCODING:
            raise OSError(f"no network to download {name}")
        return real_get_encoding(name)

    monkeypatch.setattr(tiktoken, "get_encoding", offline_only)
    tokens.get_encoding.cache_clear()
    tokens._encoding_by_name.cache_clear()
    try:
        assert tokens.encoding_name("gpt-4o") == tokens.OFFLINE_ENCODING
        assert tokens.encoding_name("my-local-llama") == tokens.OFFLINE_ENCODING
        assert tokens.count_tokens("hello world", "gpt-4o") == 2
        assert tokens.get_encoding("gpt-4o") is tokens.get_encoding("gpt-4o")  # cached
    finally:
        tokens.get_encoding.cache_clear()
        tokens._encoding_by_name.cache_clear()


def test_message_tokens_add_the_documented_overhead() -> None:
    model = "my-local-llama"
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello world", "name": "x"}]
    enc = tokens.get_encoding(model)
    content = sum(len(enc.encode(v)) for m in messages for v in m.values())
    expected = content + 2 * tokens.TOKENS_PER_MESSAGE + tokens.TOKENS_PER_NAME + tokens.REPLY_PRIMING
    assert tokens.count_message_tokens(messages, model) == expected
    assert tokens.count_message_tokens([], model) == tokens.REPLY_PRIMING
    assert tokens.message_tokens({"role": "user", "content": "hello world"}, model) == 3 + 1 + 2
    parts = {"role": "user", "content": [{"type": "text", "text": "hello world"}, {"type": "image_url"}]}
    assert tokens.message_tokens(parts, model) == 3 + 1 + 2


def test_count_tokens_treats_special_token_text_as_plain_text() -> None:
    assert tokens.count_tokens("<|endoftext|>", "gpt-4") > 1


# ---------------------------------------------------------------- CLI
def test_cli_prompts_show_prints_messages_and_token_counts(sample_db: Path) -> None:
    runner = CliRunner()
    args = ["prompts", "show", "--image-id", str(SAMPLE_CROWD_IMAGE), "--type", "detail_description",
            "--format", "llava-text", "--db", str(sample_db), "--model", "gpt-4"]
    result = runner.invoke(get_app(), args)
    assert result.exit_code == 0, result.output
    with store.read(sample_db) as con:
        ctx = load_contexts(con, [SAMPLE_CROWD_IMAGE])[SAMPLE_CROWD_IMAGE]
    messages, version = build_messages(ctx, "detail_description", "llava-text")
    assert f"prompt_version {version}" in result.output
    for i, message in enumerate(messages, 1):
        header = f"===== [{i}/{len(messages)}] {message['role']} · {tokens.message_tokens(message, 'gpt-4')} tokens"
        assert header in result.output
        assert message["content"] in result.output
    assert f"total {tokens.count_message_tokens(messages, 'gpt-4')} prompt tokens" in result.output
    as_json = runner.invoke(get_app(), [*args, "--json"])
    assert json.loads(as_json.output) == messages


def test_cli_prompts_show_explains_a_missing_image(sample_db: Path) -> None:
    result = CliRunner().invoke(get_app(), ["prompts", "show", "--image-id", "42", "--type", "conversation",
                                            "--db", str(sample_db)])
    assert result.exit_code == 1
    assert "image 42 is not in" in result.output and "vistune ingest" in result.output


def test_cli_prompts_list_names_every_type_and_version() -> None:
    result = CliRunner().invoke(get_app(), ["prompts", "list", "--model", "gpt-4"])
    assert result.exit_code == 0, result.output
    for name in SAMPLE_TYPES:
        assert f"{name}: prompt_version {load_template(name).version}" in result.output
