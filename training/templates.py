"""Conversation templates: a conversation becomes text segments, each marked as target (trained) or not.

`plain` (stage 1): `<image>` then the caption and a newline, as in LLaVA's pretraining.
`vicuna_v1` (stage 2): "SYSTEM USER: q ASSISTANT: a</s>USER: ..." as in LLaVA's `conv_vicuna_v1`.
Only assistant replies and their end-of-turn token are targets.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from schemas.llava import IMAGE_PLACEHOLDER

log = logging.getLogger(__name__)

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


@dataclass(frozen=True)
class Segment:
    """A piece of the rendered conversation; `target` pieces receive labels."""

    text: str
    target: bool


def _turns(conversations: list[dict], sample_id: str) -> list[tuple[str, str]]:
    turns = []
    for index, turn in enumerate(conversations):
        role = ROLES.get(str(turn.get("from", "")).lower())
        if role is None:
            raise ValueError(f"sample {sample_id}: conversations[{index}].from={turn.get('from')!r} is not human/gpt")
        expected = "user" if index % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(
                f"sample {sample_id}: conversations[{index}] should be from {expected}, roles must alternate"
            )
        turns.append((role, str(turn.get("value", ""))))
    if not turns or turns[-1][0] != "assistant":
        raise ValueError(f"sample {sample_id}: conversation must end with an assistant (gpt) reply")
    return turns


def plain(conversations: list[dict], sample_id: str, eos: str) -> list[Segment]:
    """Stage-1 template: image, then the caption (the first assistant reply), then a newline."""
    turns = _turns(conversations, sample_id)
    prompt = IMAGE_PLACEHOLDER if IMAGE_PLACEHOLDER in turns[0][1] else ""
    return [Segment(prompt, False), Segment(turns[1][1].strip() + "\n", True)]


def vicuna_v1(conversations: list[dict], sample_id: str, eos: str) -> list[Segment]:
    """Stage-2 template, LLaVA's `conv_vicuna_v1` (sep " ", sep2 = the tokenizer's eos)."""
    segments = [Segment(VICUNA_SYSTEM + " ", False)]
    for role, text in _turns(conversations, sample_id):
        if role == "user":
            segments.append(Segment(f"USER: {text.strip()} ASSISTANT:", False))
        else:
            # The leading space belongs to the reply: word-piece tokenizers attach it to the first word.
            segments.append(Segment(f" {text.strip()}{eos}", True))
    return segments


def vicuna_v1_chat_template(eos: str) -> str:
    """The `vicuna_v1` format as a Jinja chat template, saved with the processor so `apply_chat_template`
    (and servers such as vLLM) build exactly the prompts the model was trained on."""
    return (
        "{%- set ns = namespace(system='" + VICUNA_SYSTEM.replace("'", "\\'") + "') -%}"
        "{%- for message in messages if message['role'] == 'system' -%}"
        "{%- set ns.system = message['content'] if message['content'] is string else "
        "message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') -%}"
        "{%- endfor -%}"
        "{{- ns.system + ' ' -}}"
        "{%- for message in messages if message['role'] != 'system' -%}"
        "{%- if message['content'] is string -%}{%- set text = message['content'] -%}{%- set images = 0 -%}"
        "{%- else -%}"
        "{%- set text = message['content'] | selectattr('type', 'equalto', 'text') "
        "| map(attribute='text') | join(' ') -%}"
        "{%- set images = message['content'] | selectattr('type', 'equalto', 'image') | list | length -%}"
        "{%- endif -%}"
        "{%- if message['role'] == 'user' -%}"
        "{{- 'USER: ' + '" + IMAGE_PLACEHOLDER + "\\n' * images + text | trim + ' ' -}}"
        "{%- else -%}{{- 'ASSISTANT: ' + text | trim + '" + eos + "' -}}{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
    )


TEMPLATES: dict[str, Callable[[list[dict], str, str], list[Segment]]] = {"plain": plain, "vicuna_v1": vicuna_v1}

# Beside every saved model (stage `final/`, `merged/`): which template rendered its training text, so inference
# builds prompts the same way (the processor's chat template is always vicuna_v1, even after stage 1).
TEMPLATE_RECORD = "vistune_template.json"
DEFAULT_TEMPLATE = "vicuna_v1"  # what a checkpoint saved before the record existed is assumed to use


def record_template(checkpoint: Path, template: str) -> Path:
    """Write `checkpoint/vistune_template.json` naming the template the checkpoint was trained with."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; choose one of {sorted(TEMPLATES)}")
    path = Path(checkpoint) / TEMPLATE_RECORD
    path.write_text(json.dumps({"template": template}) + "\n")
    return path


def recorded_template(checkpoint: Path) -> str:
    """The template recorded beside `checkpoint`; `vicuna_v1` (with a warning) when none was recorded."""
    path = Path(checkpoint) / TEMPLATE_RECORD
    if not path.exists():
        log.warning("%s records no template (saved before %s existed); assuming %s", checkpoint, TEMPLATE_RECORD,
                    DEFAULT_TEMPLATE)
        return DEFAULT_TEMPLATE
    try:
        template = json.loads(path.read_text()).get("template")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise ValueError(f"{path}: not a json object with a 'template' field ({exc})") from exc
    if template not in TEMPLATES:
        raise ValueError(f"{path}: template {template!r} is not one of {sorted(TEMPLATES)}")
    return template
