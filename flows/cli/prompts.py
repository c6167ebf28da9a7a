"""`vistune prompts ...`: look at the exact messages a request would send, with token counts."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from flows.cli import prompts_app
from schemas.samples import SAMPLE_TYPES
from schemas.settings import get_settings
from tasks import store
from tasks.prompting.formats import OUTPUT_FORMATS
from tasks.prompting.prompts import (
    PromptFileError,
    build_messages,
    load_contexts,
    load_prompt_set,
    load_template,
    shared_prefix,
)
from tasks.prompting.tokens import REPLY_PRIMING, count_message_tokens, encoding_name, message_tokens

PROMPT_SET_HELP = ("Prompt set folder: vistune's layout or LLaVA's released playground/data/prompts "
                   "(default: vistune's own; docs/PROMPTS.md).")


def _check_choice(value: str, choices: tuple[str, ...] | list[str], what: str) -> str:
    if value not in choices:
        raise typer.BadParameter(f"unknown {what} {value!r}; expected one of {', '.join(choices)}")
    return value


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


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
    with store.read(db) as con:
        contexts = load_contexts(con, [image_id])
    if image_id not in contexts:
        typer.echo(f"image {image_id} is not in {store.resolve_db(db)}: ingest it first "
                   "(`vistune ingest --coco DIR`) or list ids with `vistune sql \"SELECT image_id FROM images\"`",
                   err=True)
        raise typer.Exit(1)
    try:
        messages, version = build_messages(contexts[image_id], type_name, output_format, prompt_set)
    except PromptFileError as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(messages, indent=2, ensure_ascii=False))
        return
    typer.echo(f"# image {image_id} · {type_name} · format {output_format} · prompt set {template.prompt_set} "
               f"({template.layout} layout) · prompt_version {version}")
    typer.echo(f"# tokens counted with {encoding_name(model)} for model {model}")
    for i, message in enumerate(messages, 1):
        tokens = message_tokens(message, model)
        typer.echo(f"\n===== [{i}/{len(messages)}] {message['role']} · {tokens} tokens =====")
        typer.echo(message["content"])
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
            typer.echo(f"{name}: prompt_version {template.version} · {template.layout} layout · context "
                       f"{'+'.join(template.context.fields)} · {len(template.examples)} examples · prefix tokens: "
                       f"{', '.join(sizes)} · files: {', '.join(template.files)}")
    except PromptFileError as exc:
        _fail(str(exc))
