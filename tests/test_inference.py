"""Inference: every checkpoint kind answers in its trained template, left padding changes nothing, a killed run
resumes without redoing stored answers, bad inputs fail with one clear line, and the backend registry and the vLLM
backend's request shape."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from PIL import Image

from tests.test_inference_support import inference_checkpoints, question_images, write_questions
from training import cli
from training.data import encode_conversation
from training.inference import (
    BackendUnavailable,
    Conversation,
    Generation,
    GenerationParams,
    InferInputError,
    TransformersBackend,
    answer_id,
    answer_questions,
    create_backend,
    end_of_turn,
    register_backend,
    render_prompt,
    run_infer,
    until_marker,
)
from training.templates import TEMPLATE_RECORD, TEMPLATES, recorded_template

PARAMS = GenerationParams(max_new_tokens=8)


@pytest.fixture(scope="module")
def checkpoints(coco_images: Path) -> dict[str, Path]:
    return inference_checkpoints(coco_images)


@pytest.fixture(scope="module")
def image_root(coco_images: Path) -> Path:
    return coco_images / "train2017"


@pytest.fixture(scope="module")
def images(coco_images: Path) -> list[str]:
    return question_images(coco_images, 3)


@pytest.fixture(scope="module")
def backends(checkpoints: dict[str, Path]) -> dict[str, TransformersBackend]:
    return {kind: TransformersBackend(path) for kind, path in checkpoints.items()}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class CountingBackend:
    """Wraps a backend and records every conversation it is asked (to count model calls)."""

    def __init__(self, inner: TransformersBackend, fail_on_call: int | None = None) -> None:
        self.inner, self.fail_on_call = inner, fail_on_call
        self.name, self.default_model_id = inner.name, inner.default_model_id
        self.asked: list[str] = []
        self.calls = 0

    def generate(self, conversations, params):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt("killed mid-run")
        self.asked += [c.id for c in conversations]
        return self.inner.generate(conversations, params)


# ---------------------------------------------------------------- every checkpoint kind
@pytest.mark.parametrize("kind", ["stage1", "full", "adapter", "merged"])
def test_every_checkpoint_kind_answers_a_questions_file(kind, checkpoints, image_root, images, tmp_path, capsys):
    questions = write_questions(tmp_path / "questions.jsonl", images, count=3)
    out = tmp_path / "answers.jsonl"
    argv = ["infer", "--model", str(checkpoints[kind]), "--questions", str(questions), "--image-root",
            str(image_root), "--out", str(out), "--batch-size", "2", "--max-new-tokens", "6", "--model-id", kind]
    assert cli.infer(argv[1:]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    answers = _lines(out)
    assert [a["question_id"] for a in answers] == [0, 1, 2]
    for answer, question in zip(answers, _lines(questions), strict=True):
        assert set(answer) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
        assert answer["prompt"] == question["text"] and answer["model_id"] == kind
        assert answer["answer_id"] == answer_id(kind, answer["question_id"], answer["prompt"], answer["text"])
        meta = answer["metadata"]
        assert meta["backend"] == "transformers" and meta["max_new_tokens"] == 6 and meta["temperature"] == 0.0
        assert 1 <= meta["tokens_generated"] <= 6


def test_checkpoints_record_their_template_and_merge_keeps_it(checkpoints):
    assert recorded_template(checkpoints["stage1"]) == "plain"
    assert [recorded_template(checkpoints[k]) for k in ("full", "adapter", "merged")] == ["vicuna_v1"] * 3


def test_a_checkpoint_without_a_record_is_read_as_vicuna_v1(tmp_path, caplog):
    assert recorded_template(tmp_path) == "vicuna_v1"
    assert TEMPLATE_RECORD in caplog.text
    (tmp_path / TEMPLATE_RECORD).write_text('{"template": "chatml"}')
    with pytest.raises(ValueError, match="chatml"):
        recorded_template(tmp_path)


def test_the_adapter_folder_answers_as_its_merge_does(backends, image_root, images):
    conversations = [Conversation.question(q, image_root / images[i]) for i, q in enumerate(["What is it?", "Why?"])]
    adapter = backends["adapter"].generate(conversations, PARAMS)
    assert adapter == backends["merged"].generate(conversations, PARAMS)
    assert adapter != backends["full"].generate(conversations, PARAMS)  # a different model, a different answer


def test_stage1_prompt_is_the_plain_template_and_stops_at_its_newline(backends, image_root, images):
    backend = backends["stage1"]
    assert backend.template == "plain" and backend.end_of_turn == "\n"
    reply = backend.generate([Conversation.question("anything", image_root / images[0])],
                             GenerationParams(max_new_tokens=40))[0]
    assert "\n" not in reply.text


@pytest.mark.parametrize("kind", ["full", "stage1"])
def test_stream_yields_pieces_that_join_to_the_reply(kind, backends, image_root, images):
    backend = backends[kind]
    conversation = Conversation.question("What is it?", image_root / images[0])
    params = GenerationParams(max_new_tokens=30)
    pieces = list(backend.stream(conversation, params))
    assert len(pieces) > 1  # streamed as generated, not all at the end
    assert "".join(pieces).strip() == backend.generate([conversation], params)[0].text


def test_closing_a_stream_early_stops_the_generation(backends, image_root, images):
    backend = backends["full"]
    calls = []
    hook = backend.model.register_forward_hook(lambda *_: calls.append(1))  # one call per generated token
    stream = backend.stream(Conversation.question("What is it?", image_root / images[0]),
                            GenerationParams(max_new_tokens=400))
    next(stream)
    stream.close()  # what Ctrl-C in a chat does to the reply being streamed
    hook.remove()
    assert len(calls) < 100, f"{len(calls)} forward passes: the generation went on after the reader left"


@pytest.mark.parametrize(("pieces", "shown"), [
    (["A c", "at\n", "more\n"], ["A c", "at"]),           # the marker inside a piece: the rest is dropped
    (["A cat", "\n"], ["A cat"]),                          # the marker alone
    (["no marker ", "at all"], ["no marker ", "at all"]),
    (["ends in END", "ING"], ["ends in ", "ENDING"]),       # held back while it may begin the marker, then shown
    (["x EN"], ["x ", "EN"]),                               # the reply ended on a marker's beginning: it was text
])
def test_until_marker_shows_text_before_the_marker_only(pieces, shown):
    marker = "\n" if any("\n" in p for p in pieces) else "END\n"
    assert list(until_marker(iter(pieces), marker)) == shown


def test_a_reply_stops_at_the_end_of_turn_marker_in_generate_and_stream(checkpoints, image_root, images):
    backend = TransformersBackend(checkpoints["stage1"])
    conversation = Conversation.question("What is it?", image_root / images[0])
    params = GenerationParams(max_new_tokens=30)
    free = backend.generate([conversation], params)[0]
    # A marker this random model does write (its own, "\n", never comes): everything from it on is cut.
    words = free.text.split()
    backend.end_of_turn = " " + words[2]
    stopped = backend.generate([conversation], params)[0]
    assert stopped.text == free.text.split(backend.end_of_turn)[0].strip()
    assert stopped.tokens_generated < free.tokens_generated  # generation itself stopped there
    assert "".join(backend.stream(conversation, params)).strip() == stopped.text


# ---------------------------------------------------------------- prompts in the trained template
@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_prompt_plus_reply_is_exactly_the_training_text(template, backends):
    tokenizer = backends["full"].tokenizer
    turns = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat."},
             {"from": "human", "value": "And the colour?"}, {"from": "gpt", "value": "Black."}]
    training_text = "".join(s.text for s in TEMPLATES[template](turns, "t", tokenizer.eos_token))
    history = Conversation(tuple({**t, "value": t["value"].replace("<image>\n", "")} for t in turns[:-1]), Path("x"))
    prompt = render_prompt(template, history, tokenizer.eos_token)
    reply = " Black." if template == "vicuna_v1" else "A cat."  # plain: image then the first reply only
    assert prompt + reply + end_of_turn(template, tokenizer.eos_token) == training_text
    # and the tokens the model saw in training start with the prompt's tokens
    record = {"image": "x.jpg", "conversations": turns}
    ids, _, _ = encode_conversation(record, "t", TEMPLATES[template], tokenizer, tokenizer.convert_tokens_to_ids(
        "<image>"), 1, 10_000)
    assert ids[: len(tokenizer(prompt)["input_ids"])] == tokenizer(prompt)["input_ids"]


# ---------------------------------------------------------------- batching
def test_left_padding_gives_the_same_greedy_answer_alone_and_in_a_batch(backends, image_root, images):
    backend = backends["full"]
    short = Conversation.question("Why?", image_root / images[0])
    long = Conversation.question("Describe every object in the picture, its colour, and where it stands. " * 3,
                                 image_root / images[1])
    inputs = backend._inputs([short, long])
    assert inputs["attention_mask"][0, 0] == 0 and inputs["attention_mask"][0, -1] == 1  # padded on the left
    alone = backend.generate([short], PARAMS)[0]
    assert backend.generate([short, long], PARAMS)[0] == alone
    assert backend.generate([long, short], PARAMS)[1] == alone
    assert backend.generate([long], PARAMS)[0] == backend.generate([short, long], PARAMS)[1]


def test_sampling_follows_temperature_and_greedy_is_repeatable(backends, image_root, images):
    backend = backends["full"]
    question = [Conversation.question("What is it?", image_root / images[0])]
    greedy = [backend.generate(question, GenerationParams(max_new_tokens=12))[0] for _ in range(2)]
    assert greedy[0] == greedy[1]
    sampled = {backend.generate(question, GenerationParams(max_new_tokens=12, temperature=5.0))[0].text
               for _ in range(4)}
    assert len(sampled) > 1  # at temperature 5 a tiny random model's 12 tokens do not repeat 4 times


# ---------------------------------------------------------------- resume
def test_a_killed_run_loses_at_most_one_batch_and_the_rerun_redoes_nothing_stored(
    backends, image_root, images, tmp_path
):
    questions = write_questions(tmp_path / "q.jsonl", images, count=5)
    reference = tmp_path / "reference.jsonl"
    answer_questions(questions, image_root, reference, backends["full"], PARAMS, batch_size=2, progress=False)

    out = tmp_path / "answers.jsonl"
    killed = CountingBackend(backends["full"], fail_on_call=2)
    with pytest.raises(KeyboardInterrupt):
        answer_questions(questions, image_root, out, killed, PARAMS, batch_size=2, progress=False)
    assert [a["question_id"] for a in _lines(out)] == [0, 1]  # the first batch, whole

    # a kill in the middle of a write: the next answer's line cut short
    partial = reference.read_text().splitlines(keepends=True)[2]
    with out.open("a") as handle:
        handle.write(partial[: len(partial) // 2])
    rerun = CountingBackend(backends["full"])
    summary = answer_questions(questions, image_root, out, rerun, PARAMS, batch_size=2, progress=False)
    assert rerun.asked == ["2", "3", "4"] and summary.answered == 3 and summary.already_stored == 2
    assert out.read_text() == reference.read_text()

    again = CountingBackend(backends["full"])
    assert answer_questions(questions, image_root, out, again, PARAMS, progress=False).answered == 0
    assert again.calls == 0


def test_answers_of_another_model_are_not_resumed_into(backends, image_root, images, tmp_path):
    questions = write_questions(tmp_path / "q.jsonl", images, count=1)
    out = tmp_path / "a.jsonl"
    out.write_text(json.dumps({"question_id": 0, "text": "x", "model_id": "someone-else"}) + "\n")
    with pytest.raises(InferInputError, match="line 1 is an answer of model 'someone-else'"):
        answer_questions(questions, image_root, out, backends["full"], PARAMS, progress=False)
    out.write_text("not json\n" + json.dumps({"question_id": 0, "model_id": "m"}) + "\n")
    with pytest.raises(InferInputError, match=r"a\.jsonl line 1 is not an answer line"):
        answer_questions(questions, image_root, out, backends["full"], PARAMS, model_id="m", progress=False)


# ---------------------------------------------------------------- bad inputs
BAD_LINES = [
    ("{not json", "line 2: Invalid JSON"),
    ('{"question_id": 7, "image": "a.jpg", "category": "conv"}', "line 2: text: Field required"),
    ('{"question_id": "seven", "image": "a.jpg", "text": "q", "category": "conv"}', "line 2: question_id: "),
    ('{"question_id": 7, "image": "a.jpg", "text": "q", "category": "chitchat"}', "line 2: category: "),
    ('{"question_id": 0, "image": "a.jpg", "text": "q", "category": "conv"}', "line 2: question_id 0 repeats line 1"),
    ('{"question_id": 7, "image": "../a.jpg", "text": "q", "category": "conv"}', "line 2: .*leaves image_root"),
    ('{"question_id": 7, "image": "a.jpg", "text": "<image> q <image>", "category": "conv"}',
     "line 2: .*2 <image> placeholders"),
]


@pytest.mark.parametrize(("line", "message"), BAD_LINES,
                         ids=["not-json", "no-text", "id-not-int", "bad-category", "repeated-id", "outside-root",
                              "placeholders"])
def test_a_bad_question_line_is_one_error_naming_the_line(line, message, image_root, images, tmp_path, capsys):
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question_id": 0, "image": images[0], "text": "q", "category": "conv"})
                         + "\n" + line + "\n")
    with pytest.raises(InferInputError, match=message):
        run_infer("never-loaded", questions, image_root, tmp_path / "a.jsonl")
    argv = ["--model", "never-loaded", "--questions", str(questions), "--image-root", str(image_root),
            "--out", str(tmp_path / "a.jsonl")]
    assert cli.infer(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "q.jsonl line 2" in err


def test_a_missing_image_names_the_question_and_the_path(image_root, images, tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question_id": 41, "image": "nowhere.jpg", "text": "q", "category": "conv"}))
    with pytest.raises(
        FileNotFoundError, match=r"question_id 41 \(.*q\.jsonl line 1\): image /.*/nowhere\.jpg not found",
    ):
        run_infer("never-loaded", questions, image_root, tmp_path / "a.jsonl")


def test_a_folder_without_a_checkpoint_and_bad_params_are_clear_errors(image_root, images, tmp_path):
    questions = write_questions(tmp_path / "q.jsonl", images, count=1)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} holds no vistune checkpoint"):
        run_infer(tmp_path, questions, image_root, tmp_path / "a.jsonl")
    with pytest.raises(ValueError, match=r"unknown inference backend 'tgi'; registered: .*transformers"):
        run_infer(tmp_path, questions, image_root, tmp_path / "a.jsonl", backend="tgi")
    with pytest.raises(ValueError, match="top_p must be in"):
        GenerationParams(top_p=0)


# ---------------------------------------------------------------- backends
def test_a_registered_backend_is_created_with_its_options_and_answers(image_root, images, tmp_path):
    made = {}

    class Echo:
        name = "echo"
        default_model_id = "echo-model"

        def generate(self, conversations, params):
            return [Generation(c.turns[-1]["value"].upper(), 1) for c in conversations]

    def factory(model, **options):
        made.update(model=model, **options)
        return Echo()

    register_backend("echo", factory)
    backend = create_backend("echo", "some/model", base_url="http://x")
    assert made == {"model": "some/model", "base_url": "http://x"}
    questions = write_questions(tmp_path / "q.jsonl", images, count=2)
    run_infer("some/model", questions, image_root, tmp_path / "a.jsonl", backend="echo")
    answers = _lines(tmp_path / "a.jsonl")
    assert [a["text"] for a in answers] == [q["text"].upper() for q in _lines(questions)]
    assert {a["model_id"] for a in answers} == {backend.default_model_id}


def test_vllm_backend_without_vllm_says_how_to_get_it(checkpoints, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # importing it now fails, as where it is not installed
    with pytest.raises(BackendUnavailable, match=r"pip install vllm.*or use --backend transformers"):
        create_backend("vllm", checkpoints["merged"])


class FakeVllm:
    """Stands in for the `vllm` module: records what the backend hands to `LLM` and `LLM.generate`."""

    def __init__(self) -> None:
        self.engine: dict = {}
        self.requests: list = []
        self.sampling = None
        fake = self

        class SamplingParams:
            def __init__(self, **kwargs):
                self.kwargs = kwargs

        class LLM:
            def __init__(self, **kwargs):
                fake.engine = kwargs

            def generate(self, requests, sampling, use_tqdm=True):
                fake.requests, fake.sampling = requests, sampling
                output = types.SimpleNamespace(text=" a reply\nmore", token_ids=[5, 6, 7])
                return [types.SimpleNamespace(outputs=[output]) for _ in requests]

        self.module = types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams)


def test_vllm_backend_sends_the_trained_prompt_and_the_image(checkpoints, backends, image_root, images, monkeypatch):
    fake = FakeVllm()
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    backend = create_backend("vllm", checkpoints["merged"], gpu_memory_utilization=0.5)
    assert fake.engine == {"model": str(checkpoints["merged"]), "limit_mm_per_prompt": {"image": 1},
                           "gpu_memory_utilization": 0.5}
    conversation = Conversation.question("What is it?", image_root / images[0])
    replies = backend.generate([conversation], GenerationParams(max_new_tokens=9, temperature=0.2, top_p=0.9))
    assert replies == [Generation("a reply\nmore", 3)]
    request = fake.requests[0]
    eos = backends["merged"].tokenizer.eos_token
    assert request["prompt"] == render_prompt("vicuna_v1", conversation, eos)
    assert request["prompt"].endswith("USER: <image>\nWhat is it? ASSISTANT:")
    assert isinstance(request["multi_modal_data"]["image"], Image.Image)
    assert fake.sampling.kwargs == {"temperature": 0.2, "top_p": 0.9, "max_tokens": 9, "stop": None}

    stage1 = create_backend("vllm", checkpoints["stage1"])
    assert stage1.generate([conversation], PARAMS) == [Generation("a reply", 3)]  # plain ends at the newline
    assert fake.requests[0]["prompt"] == "<image>" and fake.sampling.kwargs["stop"] == ["\n"]


def test_vllm_backend_refuses_what_vllm_cannot_load(checkpoints, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", FakeVllm().module)
    with pytest.raises(ValueError, match=r"is a LoRA adapter.*python -m training merge"):
        create_backend("vllm", checkpoints["adapter"])
    config = json.loads((checkpoints["merged"] / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "projector_hidden_act": "linear"}))
    with pytest.raises(ValueError, match="convert-for-serving"):
        create_backend("vllm", tmp_path)
