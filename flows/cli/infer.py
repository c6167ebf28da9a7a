"""`vistune infer` and `vistune chat`: answer questions with a checkpoint, or talk to it about an image.

Both run `training/inference.py` in this process (imported when a command runs, so `vistune --help` stays light).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from flows.cli import app
from flows.cli.output import make_console

err_console = make_console(stderr=True)

# Modules that register more inference backends (`training.inference.register_backend`) when imported; a module
# that does not exist (yet) is skipped.
BACKEND_PLUGINS = ("tasks.eval.openai_backend",)  # openai: an OpenAI-compatible vision endpoint, via the engine

MaxNewTokens = Annotated[int, typer.Option("--max-new-tokens", metavar="N", help="most tokens per reply")]
Temperature = Annotated[float, typer.Option("--temperature", metavar="T", help="0: greedy (default)")]
TopP = Annotated[float, typer.Option("--top-p", metavar="P", help="nucleus sampling, with --temperature > 0")]


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def _load_backend_plugins() -> None:
    for name in BACKEND_PLUGINS:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not name.startswith(exc.name):  # a missing dependency, not a missing plugin
                raise


@app.command("infer")
def infer_command(
    model: Annotated[str, typer.Option("--model", metavar="CKPT", help="a stage's final/ (full or adapter) or "
                                       "merged/; for a remote backend, the model name")],
    questions: Annotated[Path, typer.Option("--questions", metavar="Q.jsonl", help="LLaVA questions file")],
    image_root: Annotated[Path, typer.Option("--image-root", metavar="DIR", help="folder the images are in")],
    out: Annotated[Path, typer.Option("--out", metavar="A.jsonl", help="answers file (appended; a rerun resumes)")],
    backend: Annotated[str, typer.Option(
        "--backend", metavar="NAME",
        help="transformers, vllm, or openai (--model is then the endpoint's model; OPENAI_BASE_URL, VISTUNE_DB)",
    )] = "transformers",
    batch_size: Annotated[int, typer.Option("--batch-size", metavar="N", help="questions per generate call")] = 8,
    max_new_tokens: MaxNewTokens = 512,
    temperature: Temperature = 0.0,
    top_p: TopP = 1.0,
    model_id: Annotated[
        str | None, typer.Option("--model-id", metavar="NAME", help="model_id in the answers (default: e.g. "
                                 "stage2/final)")
    ] = None,
) -> None:
    """Answer every question of a LLaVA questions file not yet in --out, in the checkpoint's trained template."""
    from training.inference import BackendUnavailable, GenerationParams, InferInputError, run_infer

    _load_backend_plugins()
    try:
        summary = run_infer(
            model, questions, image_root, out, backend=backend,
            params=GenerationParams(max_new_tokens, temperature, top_p), batch_size=batch_size, model_id=model_id,
            progress=sys.stderr.isatty(),
        )
    except (FileNotFoundError, InferInputError, ValueError, BackendUnavailable) as exc:
        raise _fail(str(exc)) from None
    except RuntimeError as exc:  # the openai backend: the engine gave up (RunAborted) or a question got no answer
        if backend != "openai":
            raise
        raise _fail(str(exc)) from None
    print(f"{summary.model_id}: {summary.answered} new answer(s), {summary.already_stored} already stored, "
          f"{summary.tokens_generated} tokens generated -> {summary.out}")


@app.command("chat")
def chat_command(
    model: Annotated[Path, typer.Option("--model", metavar="CKPT", help="a stage's final/ or merged/")],
    image: Annotated[Path, typer.Option("--image", metavar="FILE", help="the image to talk about")],
    prompt: Annotated[
        str | None, typer.Option("--prompt", metavar="TEXT", help="answer this once and exit (default: a session)")
    ] = None,
    max_new_tokens: MaxNewTokens = 512,
    temperature: Temperature = 0.0,
    top_p: TopP = 1.0,
) -> None:
    """Talk to a checkpoint about an image; replies stream as they are generated.

    In a session: /image PATH starts a new conversation about another image, /reset starts over, /quit leaves.
    """
    from training.chat import run_chat
    from training.inference import GenerationParams, check_checkpoint

    try:
        check_checkpoint(model)
        run_chat(model, image, prompt, GenerationParams(max_new_tokens, temperature, top_p))
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from None
