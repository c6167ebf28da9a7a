"""`vistune prompts ...`: look at the exact messages a request would send, with token counts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from flows.cli import prompts_app
from schemas.samples import SAMPLE_TYPES
from schemas.settings import get_settings
from tasks import store
from tasks.prompting.formats import OUTPUT_FORMATS
from tasks.prompting.images import IMAGE_REF, ImageUnavailable, abbreviate, materialize
from tasks.prompting.prompts import (
    PromptFileError,
    build_messages,
    load_contexts,
    load_prompt_set,
    load_template,
    shared_prefix,
)
from tasks.prompting.tokens import (
    REPLY_PRIMING,
    count_message_tokens,
    encoding_name,
    image_part_tokens,
    message_tokens,
)

PROMPT_SET_HELP = ("Prompt set folder: vistune's layout or LLaVA's released playground/data/prompts "
                   "(default: vistune's own; docs/PROMPTS.md).")


def _check_choice(value: str, choices: tuple[str, ...] | list[str], what: str) -> str:
    if value not in choices:
        raise typer.BadParameter(f"unknown {what} {value!r}; expected one of {', '.join(choices)}")
    return value


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _as_sent(message: dict[str, Any]) -> dict[str, Any]:
    # The message as the API receives it (stored image references materialised), base64 abbreviated.
    content = message["content"]
    if not isinstance(content, list):
        return message
    parts = [abbreviate(materialize(p)) if p.get("type") == IMAGE_REF else abbreviate(p) for p in content]
    return {**message, "content": parts}


def _show_content(message: dict[str, Any], model: str) -> None:
    content = message["content"]
    if not isinstance(content, list):
        typer.echo(content)
        return
    for part in content:
        if part.get("type") == "text":
            typer.echo(part["text"])
            continue
        line = f"[{part.get('type')} part · {image_part_tokens(part, model)} tokens]"
        if part.get("type") == IMAGE_REF:
            ref = part[IMAGE_REF]
            line = (f"[image {ref['image_id']} · detail {ref['detail']} · sent at {ref['width']}x{ref['height']} · "
                    f"sha256 {ref['sha256'][:12]} · {image_part_tokens(part, model)} tokens · {ref['path']}]\n"
                    f"{abbreviate(materialize(part))['image_url']['url']}")
        typer.echo(line)


@prompts_app.command("show")
def show(
    image_id: int = typer.Option(..., "--image-id", help="COCO image id of an ingested image."),
    type_name: str = typer.Option(..., "--type", help=f"Sample type: {', '.join(SAMPLE_TYPES)}."),
    output_format: str | None = typer.Option(
        None, "--format", help=f"Output format: {', '.join(OUTPUT_FORMATS)} (default: the prompt set's first)."),
    prompt_set: Path | None = typer.Option(None, "--prompt-set", help=PROMPT_SET_HELP),
    db: Path | None = typer.Option(None, "--db", help="Database file (default: VISTUNE_DB or data/vistune.duckdb)."),
    model: str | None = typer.Option(None, "--model", help="Model whose tokenizer counts tokens (default: settings)."),
    as_json: bool = typer.Option(False, "--json", help="Print the messages as the JSON list sent to the API."),
) -> None:
    """Print the exact messages for one image and sample type, with token counts per message and in total."""
    _check_choice(type_name, list(SAMPLE_TYPES), "sample type")
    if output_format is not None:
        _check_choice(output_format, OUTPUT_FORMATS, "output format")
    model = model or get_settings().model
    try:
        template = load_template(type_name, prompt_set)
    except PromptFileError as exc:
        _fail(str(exc))
    output_format = output_format or template.output_formats[0]
    try:
        with store.read(db) as con:
            contexts = load_contexts(con, [image_id])
    except FileNotFoundError as exc:  # no database
        _fail(str(exc))
    if image_id not in contexts:
        typer.echo(f"image {image_id} is not in {store.resolve_db(db)}: ingest it first "
                   "(`vistune ingest --coco DIR`) or list ids with `vistune sql \"SELECT image_id FROM images\"`",
                   err=True)
        raise typer.Exit(1)
    try:
        messages, version = build_messages(contexts[image_id], type_name, output_format, prompt_set)
        sent = [_as_sent(m) for m in messages]  # reads the image now: a bad file fails here, not mid-output
    except (PromptFileError, ImageUnavailable) as exc:
        _fail(str(exc))
    if as_json:  # image data URLs abbreviated: the payload otherwise holds 25-90 KB of base64 per image
        typer.echo(json.dumps(sent, indent=2, ensure_ascii=False))
        return
    typer.echo(f"# image {image_id} · {type_name} · format {output_format} · prompt set {template.prompt_set} "
               f"({template.layout} layout) · prompt_version {version}")
    typer.echo(f"# tokens counted with {encoding_name(model)} for model {model}")
    for i, message in enumerate(messages, 1):
        tokens = message_tokens(message, model)
        typer.echo(f"\n===== [{i}/{len(messages)}] {message['role']} · {tokens} tokens =====")
        _show_content(message, model)
    total = count_message_tokens(messages, model)
    static = count_message_tokens(messages[:-1], model) - REPLY_PRIMING
    typer.echo(f"\n# total {total} prompt tokens ({static} in the shared prefix, "
               f"{total - static - REPLY_PRIMING} for this image, {REPLY_PRIMING} reply priming)")


@prompts_app.command("list")
def list_types(
    prompt_set: Path | None = typer.Option(None, "--prompt-set", help=PROMPT_SET_HELP),
    model: str | None = typer.Option(None, "--model", help="Model whose tokenizer counts tokens (default: settings)."),
) -> None:
    """List the prompt set's sample types with their prompt version, context, files and shared-prefix size."""
    model = model or get_settings().model
    try:
        pset = load_prompt_set(prompt_set)
        typer.echo(f"prompt set {pset.name}: {pset.path}")
        for name in pset.sample_types:
            template = load_template(name, pset.path)
            sizes = [f"{fmt} {count_message_tokens(shared_prefix(name, fmt, pset.path), model) - REPLY_PRIMING}"
                     for fmt in template.output_formats]
            image = f" (detail {template.context.detail})" if "image" in template.context.fields else ""
            typer.echo(f"{name}: prompt_version {template.version} · {template.layout} layout · context "
                       f"{'+'.join(template.context.fields)}{image} · {len(template.examples)} examples · "
                       f"prefix tokens: "
                       f"{', '.join(sizes)} · files: {', '.join(template.files)}")
    except PromptFileError as exc:
        _fail(str(exc))
