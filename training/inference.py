"""Inference: load any checkpoint vistune writes and answer (image, question) batches with its trained template.

Checkpoints: a stage's `final/` (a full `LlavaForConditionalGeneration`: stage 1, or stage 2 with method full),
a LoRA/QLoRA adapter folder (stage 2 `final/` with `adapter_config.json`: the adapters and the trained projector,
loaded over the base model the adapter config names) and `merged/`. Prompts are rendered by the template the
checkpoint records (`vistune_template.json`, see `training/templates.py`), so the model sees at inference the
text it was trained on; batches are left-padded so every row's reply starts right after its own prompt.

Backends answer conversations; they are looked up by name (`create_backend`) so code outside `training/` can add
one with `register_backend` (the eval flow adds `openai`):
- `transformers` (default): the model in this process, bf16 on a GPU and fp32 on CPU; also streams (chat);
- `vllm`: vLLM's offline `LLM.generate` with the image as multi-modal data (a full or merged checkpoint; a
  `linear`-projector one after `python -m training convert-for-serving`).

`answer_questions` reads LLaVA's eval question lines and appends LLaVA answer lines, one batch at a time and
flushed, and skips the questions a previous run already answered: a killed run loses at most one batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from threading import Event, Thread
from typing import Any, Protocol

from pydantic import ValidationError

from schemas.eval import QuestionRecord
from training.data import load_rgb, resolve_image, with_image_placeholder
from training.templates import TEMPLATES, recorded_template

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
_REPLY = "REPLY"  # a stand-in reply: what the template writes after it is the end-of-turn marker


# ---------------------------------------------------------------- what a backend answers
@dataclass(frozen=True)
class Conversation:
    """One conversation to continue: LLaVA turns (`{"from": "human"|"gpt", "value"}`, ending with a human turn)
    about at most one image (a file). The `<image>` placeholder is added to the first human turn, as in training."""

    turns: tuple[dict[str, str], ...]
    image: Path | None = None
    id: str = "conversation"  # named in errors (a question id)

    @classmethod
    def question(cls, text: str, image: Path | None, question_id: object = "question") -> Conversation:
        """A one-turn conversation: a question about an image."""
        return cls(({"from": "human", "value": text},), image, str(question_id))


@dataclass(frozen=True)
class GenerationParams:
    """How to decode: greedy when `temperature` is 0 (the default), else sampling with `temperature`/`top_p`."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be 0 (greedy) or more, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        """No sampling: the most likely token every step."""
        return self.temperature == 0


@dataclass(frozen=True)
class Generation:
    """A backend's reply: the text (end-of-turn marker removed, stripped) and how many tokens it generated."""

    text: str
    tokens_generated: int


class Backend(Protocol):
    """Answers a batch of conversations. `name` goes into each answer's metadata; `default_model_id` names the
    model in answer files when the user gives no `--model-id`."""

    name: str
    default_model_id: str

    def generate(self, conversations: Sequence[Conversation], params: GenerationParams) -> list[Generation]:
        """One reply per conversation, in order."""
        ...


class BackendUnavailable(RuntimeError):
    """A backend's library is not installed (or cannot run) on this machine."""


BackendFactory = Callable[..., Backend]  # called as factory(model, **options)
_BACKENDS: dict[str, BackendFactory] = {}


def register_backend(name: str, factory: BackendFactory) -> None:
    """Make `create_backend(name, model, **options)` call `factory(model, **options)`; re-registering replaces."""
    _BACKENDS[name] = factory


def backend_names() -> list[str]:
    """The registered backend names."""
    return sorted(_BACKENDS)


def create_backend(name: str, model: str | Path, **options: Any) -> Backend:
    """A backend by name for `model` (a checkpoint folder, or whatever the backend takes as a model)."""
    if name not in _BACKENDS:
        raise ValueError(f"unknown inference backend {name!r}; registered: {', '.join(backend_names())}")
    return _BACKENDS[name](model, **options)


# ---------------------------------------------------------------- prompts in the trained template
def render_prompt(template: str, conversation: Conversation, eos: str) -> str:
    """The text the model continues: the conversation rendered by `template` up to where the reply starts."""
    turns = with_image_placeholder(list(conversation.turns), conversation.image is not None, conversation.id)
    segments = TEMPLATES[template]([*turns, {"from": "gpt", "value": _REPLY}], conversation.id, eos)
    if not segments[-1].target:
        raise ValueError(f"template {template} does not end a conversation with the reply")
    return "".join(segment.text for segment in segments[:-1])


def end_of_turn(template: str, eos: str) -> str:
    """What `template` writes after a reply (the eos token for vicuna_v1, a newline for plain): where to stop."""
    segments = TEMPLATES[template]([{"from": "human", "value": "q"}, {"from": "gpt", "value": _REPLY}], "probe", eos)
    return segments[-1].text.split(_REPLY, 1)[1]


def _cut(text: str, marker: str) -> str:
    return (text.split(marker, 1)[0] if marker else text).strip()


# ---------------------------------------------------------------- checkpoints
def is_adapter(checkpoint: Path) -> bool:
    """A LoRA/QLoRA adapter folder (PEFT's `adapter_config.json`) rather than a full model."""
    return (Path(checkpoint) / ADAPTER_CONFIG).exists()


def adapter_base(checkpoint: Path) -> Path:
    """The base checkpoint an adapter folder was trained over (`base_model_name_or_path` of its config)."""
    config_path = Path(checkpoint) / ADAPTER_CONFIG
    base = json.loads(config_path.read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{config_path} names no base_model_name_or_path; cannot tell which model it adapts")
    base_path = Path(base)
    if not (base_path / "config.json").exists():
        raise FileNotFoundError(
            f"{config_path}: its base model {base} holds no checkpoint (config.json); the adapter loads over the "
            "stage-1 result it was trained from, so keep that folder, or run `python -m training merge` where it is"
        )
    return base_path


def check_checkpoint(checkpoint: Path) -> Path:
    """`checkpoint` as a path, or a clear error when it holds neither a model nor an adapter."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.json").exists() and not is_adapter(checkpoint):
        raise FileNotFoundError(
            f"{checkpoint} holds no vistune checkpoint (config.json or {ADAPTER_CONFIG}); give a stage's final/ "
            "folder or merged/"
        )
    return checkpoint


def load_checkpoint(checkpoint: Path | str, dtype: Any = None, device: str | None = None) -> tuple[Any, Any, str]:
    """(model in eval mode on `device`, processor with left padding, template) for any vistune checkpoint.

    `dtype` defaults to bf16 on a GPU and fp32 on CPU; `device` to the GPU when there is one. An adapter is
    applied over its base and merged in memory (as `training/merge.py` does, so QLoRA adapters apply to the
    unquantized base), which makes generation as fast as a full model's.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from training.model import resolve_dtype

    checkpoint = check_checkpoint(Path(checkpoint))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or (resolve_dtype("auto") if device != "cpu" else torch.float32)
    if is_adapter(checkpoint):
        base = LlavaForConditionalGeneration.from_pretrained(adapter_base(checkpoint), dtype=dtype)
        model = PeftModel.from_pretrained(base, checkpoint).merge_and_unload()
    else:
        model = LlavaForConditionalGeneration.from_pretrained(checkpoint, dtype=dtype)
    model.to(device=device, dtype=dtype).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    processor.tokenizer.padding_side = "left"  # every row's reply starts right after its own prompt
    return model, processor, recorded_template(checkpoint)


def default_model_id(checkpoint: Path | str) -> str:
    """`stage2/final`, `llava/merged`: the checkpoint's folder and its parent, enough to tell runs apart."""
    path = Path(checkpoint).resolve()
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


# ---------------------------------------------------------------- backends
class TransformersBackend:
    """The model in this process (`generate` with left-padded batches; `stream` for chat)."""

    name = "transformers"

    def __init__(self, model: Path | str, dtype: Any = None, device: str | None = None) -> None:
        self.checkpoint = Path(model)
        self.model, self.processor, self.template = load_checkpoint(self.checkpoint, dtype, device)
        self.tokenizer = self.processor.tokenizer
        self.end_of_turn = end_of_turn(self.template, self.tokenizer.eos_token)
        self.default_model_id = default_model_id(self.checkpoint)

    def _inputs(self, conversations: Sequence[Conversation]) -> dict:
        prompts = [render_prompt(self.template, c, self.tokenizer.eos_token) for c in conversations]
        images = [load_rgb(c.image) for c in conversations if c.image is not None]
        inputs = self.processor(text=prompts, images=images or None, padding=True, return_tensors="pt")
        inputs = inputs.to(self.model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return inputs

    def _generation_config(self, params: GenerationParams) -> Any:
        from transformers import GenerationConfig

        # A full config, not overrides: a checkpoint's own generation_config (Vicuna ships sampling) is ignored.
        config = GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=not params.greedy,
            temperature=params.temperature if not params.greedy else 1.0,
            top_p=params.top_p if not params.greedy else 1.0,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            bos_token_id=self.tokenizer.bos_token_id,
        )
        if self.end_of_turn != self.tokenizer.eos_token:  # e.g. plain: the reply ends at a newline
            config.stop_strings = [self.end_of_turn]
        return config

    def generate(self, conversations: Sequence[Conversation], params: GenerationParams) -> list[Generation]:
        """Answer a batch: left-padded, one `model.generate` call."""
        import torch

        inputs = self._inputs(conversations)
        with torch.inference_mode():
            output = self.model.generate(
                **inputs, generation_config=self._generation_config(params), tokenizer=self.tokenizer
            )
        replies = []
        for row in output[:, inputs["input_ids"].shape[1] :].tolist():
            tokens = self._until_end(row)
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            replies.append(Generation(_cut(text, self.end_of_turn), len(tokens)))
        return replies

    def _until_end(self, row: list[int]) -> list[int]:
        """The generated tokens up to and including eos (the rest is padding of a row that finished early)."""
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        if eos in row:
            return row[: row.index(eos) + 1]
        while row and row[-1] == pad and pad != eos:
            row = row[:-1]
        return row

    def stream(self, conversation: Conversation, params: GenerationParams) -> Iterator[str]:
        """The reply to one conversation, piece by piece as tokens are generated (end-of-turn marker removed).

        Closing the iterator early (or an exception such as Ctrl-C while waiting) stops the generation too."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        inputs = self._inputs([conversation])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancelled = Event()
        errors: list[BaseException] = []

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
                return torch.full((input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool, device=input_ids.device)

        def run() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(**inputs, generation_config=self._generation_config(params),
                                        tokenizer=self.tokenizer, streamer=streamer,
                                        stopping_criteria=StoppingCriteriaList([Cancelled()]))
            except BaseException as exc:  # re-raised in the caller's thread below
                errors.append(exc)
                streamer.end()

        worker = Thread(target=run, daemon=True)
        worker.start()
        marker = self.end_of_turn if self.end_of_turn != self.tokenizer.eos_token else ""
        try:
            yield from until_marker(streamer, marker)  # reads the streamer to its end when not interrupted
        finally:
            cancelled.set()  # the model stops at its next token when the reader stopped early
            worker.join()
        if errors:
            raise errors[0]


def until_marker(pieces: Iterable[str], marker: str) -> Iterator[str]:
    """Streamed text up to `marker` (excluded). Text that may be the start of the marker is held back until the
    next piece decides; `pieces` is read to its end, what follows the marker is dropped."""
    held, stopped = "", False
    for piece in pieces:
        if stopped:
            continue
        held += piece
        if marker and marker in held:
            held, stopped = held.split(marker, 1)[0], True
            break_at = len(held)
        else:
            break_at = len(held) - _marker_prefix_length(held, marker)
        if break_at:
            yield held[:break_at]
        held = held[break_at:]
    if held and not stopped:  # the reply ended on what looked like the start of the marker: it was text
        yield held


def _marker_prefix_length(text: str, marker: str) -> int:
    """The longest tail of `text` that begins `marker` (held back until the next piece decides it)."""
    for size in range(min(len(marker), len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


class VllmBackend:
    """vLLM's offline engine: prompts in the trained template, the image as `multi_modal_data`."""

    name = "vllm"

    def __init__(self, model: Path | str, **engine_options: Any) -> None:
        try:
            from vllm import LLM, SamplingParams
        except ImportError as exc:
            raise BackendUnavailable(
                "the vllm backend needs vLLM, which is not installed here: `pip install vllm` on a Linux machine "
                "with a CUDA GPU, or use --backend transformers"
            ) from exc
        from transformers import AutoTokenizer, LlavaConfig

        checkpoint = check_checkpoint(Path(model))
        if is_adapter(checkpoint):
            raise ValueError(
                f"{checkpoint} is a LoRA adapter (with a trained projector vLLM cannot load as a LoRA): run "
                "`python -m training merge --config FILE` and give merged/ to the vllm backend"
            )
        if LlavaConfig.from_pretrained(checkpoint).projector_hidden_act == "linear":
            raise ValueError(
                f"{checkpoint} has the paper's `linear` projector, which vLLM does not load: run "
                f"`python -m training convert-for-serving {checkpoint} OUT_DIR` and give OUT_DIR"
            )
        self.checkpoint = checkpoint
        self.template = recorded_template(checkpoint)
        self.eos = AutoTokenizer.from_pretrained(checkpoint).eos_token
        self.end_of_turn = end_of_turn(self.template, self.eos)
        self.default_model_id = default_model_id(checkpoint)
        self._sampling_params = SamplingParams
        self.llm = LLM(model=str(checkpoint), limit_mm_per_prompt={"image": 1}, **engine_options)

    def generate(self, conversations: Sequence[Conversation], params: GenerationParams) -> list[Generation]:
        """Answer a batch in one `LLM.generate` call (vLLM schedules it itself)."""
        requests = []
        for conversation in conversations:
            request: dict[str, Any] = {"prompt": render_prompt(self.template, conversation, self.eos)}
            if conversation.image is not None:
                request["multi_modal_data"] = {"image": load_rgb(conversation.image)}
            requests.append(request)
        sampling = self._sampling_params(
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            stop=[self.end_of_turn] if self.end_of_turn != self.eos else None,
        )
        outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        return [Generation(_cut(o.outputs[0].text, self.end_of_turn), len(o.outputs[0].token_ids)) for o in outputs]


register_backend("transformers", TransformersBackend)
register_backend("vllm", VllmBackend)


# ---------------------------------------------------------------- question and answer files
class InferInputError(ValueError):
    """A line of a questions file (or of an answers file being resumed) that cannot be used."""


@dataclass(frozen=True)
class Question:
    """A question line that passed the checks, with its image resolved under the image root."""

    record: QuestionRecord
    image: Path
    line: int


def read_questions(path: Path, image_root: Path) -> list[Question]:
    """Every question of a LLaVA questions file, checked before any model loads: json, fields, unique ids, images."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"questions file {path} not found")
    questions: list[Question] = []
    seen: dict[int, int] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = QuestionRecord.model_validate_json(line)
        except ValidationError as exc:
            error = exc.errors()[0]
            field_name = ".".join(str(part) for part in error["loc"])
            problem = f"{field_name}: {error['msg']}" if field_name else error["msg"]  # no field: not json at all
            raise InferInputError(f"{path} line {number}: {problem}") from None
        if record.question_id in seen:
            raise InferInputError(
                f"{path} line {number}: question_id {record.question_id} repeats line {seen[record.question_id]}"
            )
        seen[record.question_id] = number
        name = f"question_id {record.question_id}"
        try:
            image = resolve_image(Path(image_root), record.image, name)
            with_image_placeholder([{"from": "human", "value": record.text}], True, name)
        except ValueError as exc:  # an image path leaving the root, or <image> placeholders we cannot place
            raise InferInputError(f"{path} line {number}: {exc}") from None
        if not image.is_file():
            raise FileNotFoundError(f"question_id {record.question_id} ({path} line {number}): image {image} not found")
        questions.append(Question(record, image, number))
    return questions


def answer_id(model_id: str, question_id: int, prompt: str, text: str) -> str:
    """A stable id for an answer: the same model, question and reply always give the same id."""
    digest = hashlib.sha256(json.dumps([model_id, question_id, prompt, text]).encode()).hexdigest()
    return digest[:22]


def stored_answers(out: Path, model_id: str) -> set[int]:
    """Question ids already answered in `out` by `model_id`. A last line cut short by a kill (no newline) is
    dropped from the file so appends start on a clean line; any other bad line is an error naming it."""
    if not out.exists():
        return set()
    data = out.read_bytes()
    complete = data.rfind(b"\n") + 1
    if complete < len(data):
        log.warning("%s: dropping its last line, cut short by an interrupted run; that question is answered again", out)
        with out.open("r+b") as handle:
            handle.truncate(complete)
    answered: set[int] = set()
    for number, line in enumerate(data[:complete].decode().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            question_id, owner = record["question_id"], record.get("model_id")
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise InferInputError(
                f"answers file {out} line {number} is not an answer line ({type(exc).__name__}: {exc}); "
                "fix or move the file"
            ) from None
        if owner != model_id:
            raise InferInputError(
                f"answers file {out} line {number} is an answer of model {owner!r}, not {model_id!r}; give another "
                "--out (or the same --model-id) to resume"
            )
        answered.add(question_id)
    return answered


@dataclass
class InferSummary:
    """What `answer_questions` did: new answers, answers already stored, generated tokens, where they are."""

    out: Path
    model_id: str
    answered: int = 0
    already_stored: int = 0
    tokens_generated: int = 0
    params: dict = field(default_factory=dict)


def answer_questions(
    questions_path: Path,
    image_root: Path,
    out: Path,
    backend: Backend,
    params: GenerationParams | None = None,
    *,
    batch_size: int = 8,
    model_id: str | None = None,
    progress: bool = True,
    questions: Sequence[Question] | None = None,
) -> InferSummary:
    """Answer every question of `questions_path` not yet in `out`, appending one flushed batch at a time.

    `questions`: the file already read and checked by `read_questions` (not read again)."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    params = params or GenerationParams()
    out = Path(out)
    if questions is None:
        questions = read_questions(Path(questions_path), Path(image_root))
    model_id = model_id or backend.default_model_id
    done = stored_answers(out, model_id)
    pending = [q for q in questions if q.record.question_id not in done]
    summary = InferSummary(out, model_id, already_stored=len(questions) - len(pending), params=asdict(params))
    metadata = {"backend": backend.name, **asdict(params)}
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as handle, tqdm(total=len(pending), unit="answer", desc=model_id, disable=not progress) as bar:
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            conversations = [Conversation.question(q.record.text, q.image, q.record.question_id) for q in batch]
            generations = backend.generate(conversations, params)
            if len(generations) != len(batch):
                raise RuntimeError(f"backend {backend.name} returned {len(generations)} replies for {len(batch)}")
            lines = []
            for question, generation in zip(batch, generations, strict=True):
                record = question.record
                lines.append(json.dumps({
                    "question_id": record.question_id,
                    "prompt": record.text,
                    "text": generation.text,
                    "answer_id": answer_id(model_id, record.question_id, record.text, generation.text),
                    "model_id": model_id,
                    "metadata": {**metadata, "tokens_generated": generation.tokens_generated},
                }) + "\n")
                summary.tokens_generated += generation.tokens_generated
            handle.write("".join(lines))  # one write per batch: a kill leaves whole lines or one cut-short line
            handle.flush()
            os.fsync(handle.fileno())
            summary.answered += len(batch)
            bar.update(len(batch))
    return summary


def run_infer(
    model: Path | str,
    questions_path: Path,
    image_root: Path,
    out: Path,
    *,
    backend: str = "transformers",
    params: GenerationParams | None = None,
    batch_size: int = 8,
    model_id: str | None = None,
    progress: bool = True,
) -> InferSummary:
    """`infer` of both command lines: check the questions (and images) first, then load the model and answer."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    questions = read_questions(Path(questions_path), Path(image_root))  # a bad line or image fails before loading
    answerer = create_backend(backend, model)
    return answer_questions(questions_path, image_root, out, answerer, params, batch_size=batch_size,
                            model_id=model_id, progress=progress, questions=questions)
