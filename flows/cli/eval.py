"""`vistune eval build|import-llava-bench|import-answers|run|report`: the paper's GPT-judged evaluation.

Every command composes `tasks/eval` (docs/EVALUATION.md); `build`, `import-llava-bench` and `run` resume where an
earlier run stopped, and nothing stored is asked for (or paid for) again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from flows.cli import app
from flows.cli.output import make_console
from schemas.flow_params import EvaluateParams
from tasks import store

console = make_console()
err_console = make_console(stderr=True)
eval_app = typer.Typer(help="Evaluate checkpoints the way the LLaVA paper does: questions, references, a judge LLM.",
                       no_args_is_help=True)
app.add_typer(eval_app, name="eval")


def _default(name: str) -> Any:
    """An `EvaluateParams` default: the CLI's defaults are the flow's."""
    return EvaluateParams.model_fields[name].get_default(call_default_factory=True)


DbOption = Annotated[
    Path | None, typer.Option("--db", help="DuckDB file (default: $VISTUNE_DB or data/vistune.duckdb)")
]
NameOption = Annotated[str, typer.Option("--name", help="Eval set name")]
LlmOption = Annotated[str, typer.Option("--model", help="Text-only LLM writing questions and reference answers")]
BaseUrlOption = Annotated[
    str | None, typer.Option("--base-url", help="Its OpenAI-compatible endpoint (default: $OPENAI_BASE_URL)")
]
FormatOption = Annotated[str, typer.Option("--format", help="structured (JSON) | llava-text: questions and reviews")]
ModeOption = Annotated[str, typer.Option("--mode", help="online | batch (Batch API) for the LLM calls")]
ConcurrencyOption = Annotated[int, typer.Option(help="LLM requests in flight at once")]
MaxCostOption = Annotated[float | None, typer.Option(help="Stop sending new LLM requests at this spend (this command)")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text")]


def _fail(exc: Exception, code: int = 2) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _run(fn: Callable[[], Any]) -> Any:
    # Bad input (files, names, parameters) is one line and exit 2; an endpoint that stopped the run, exit 1.
    from tasks.eval.answers import InferenceFailed
    from tasks.llm.engine import RunAborted

    try:
        return fn()
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(exc) from None
    except (RunAborted, InferenceFailed) as exc:
        raise _fail(exc, 1) from None


def _params(**values: Any) -> EvaluateParams:
    try:
        return EvaluateParams(**{k: v for k, v in values.items() if v is not None})
    except ValueError as exc:
        raise _fail(exc) from None


def _print_set(result: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.as_dict(), indent=1))
        return
    console.print(f"eval set {result.name}: {result.images} images, {result.questions} questions, "
                  f"{result.references} reference answers ({result.new_questions} questions and "
                  f"{result.new_references} references new; ${result.stats.cost_usd:.4f})", highlight=False)
    for line in result.rejects[:10]:
        console.print(f"  rejected {line}", markup=False)
    if result.failed:
        console.print(f"[yellow]{result.failed} LLM call(s) got no answer: run the command again to retry them"
                      "[/yellow]")


@eval_app.command("build")
def build_command(
    name: NameOption,
    split: Annotated[str, typer.Option(help="Ingested split the held-out images come from")] = _default("split"),
    per_category: Annotated[int, typer.Option(help="Images, so questions per category")] = _default("per_category"),
    seed: Annotated[int, typer.Option(help="Seed of the image pick")] = 0,
    model: LlmOption = _default("model"),
    base_url: BaseUrlOption = None,
    output_format: FormatOption = "structured",
    mode: ModeOption = "online",
    concurrency: ConcurrencyOption = _default("concurrency"),
    max_cost_usd: MaxCostOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Pick held-out images of a split; the LLM writes one question per (image, category) and the references."""
    from tasks.eval import run, sets

    params = _params(name=name, split=split, per_category=per_category, seed=seed, model=model, base_url=base_url,
                     output_format=output_format, mode=mode, concurrency=concurrency, max_cost_usd=max_cost_usd)
    result = _run(lambda: sets.build_set(store.resolve_db(db), name, split=split, per_category=per_category,
                                         seed=seed, config=run.writer_config(params)))
    _print_set(result, as_json)


@eval_app.command("import-llava-bench")
def import_command(
    name: NameOption,
    questions: Annotated[Path, typer.Option(help="LLaVA-Bench questions jsonl (question_id, image, text, category)")],
    context: Annotated[Path, typer.Option(help="Context jsonl: id, image, captions, instances (category, bbox)")],
    image_root: Annotated[Path, typer.Option(help="Folder the questions' image paths are relative to")],
    answers: Annotated[
        Path | None, typer.Option(help="Reference answers jsonl (question_id, text); default: generate them")
    ] = None,
    model: LlmOption = _default("model"),
    base_url: BaseUrlOption = None,
    mode: ModeOption = "online",
    concurrency: ConcurrencyOption = _default("concurrency"),
    max_cost_usd: MaxCostOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Import LLaVA-Bench's COCO layout (every line is checked first; a bad one is named with its problem)."""
    from tasks.eval import run, sets

    params = _params(name=name, model=model, base_url=base_url, mode=mode, concurrency=concurrency,
                     max_cost_usd=max_cost_usd)
    result = _run(lambda: sets.import_llava_bench(store.resolve_db(db), name, questions=questions, context=context,
                                                  image_root=image_root, answers=answers,
                                                  config=run.writer_config(params)))
    _print_set(result, as_json)


@eval_app.command("import-answers")
def import_answers_command(
    name: NameOption,
    answers: Annotated[Path, typer.Option(help="LLaVA answer jsonl (question_id, text, ...) made elsewhere")],
    model_id: Annotated[
        str | None, typer.Option(help="Store them under this id (default: the file's model_id)")
    ] = None,
    db: DbOption = None,
) -> None:
    """Store another tool's answers to the set's questions as one more model to judge."""
    from tasks.eval.answers import import_answers

    result = _run(lambda: import_answers(store.resolve_db(db), name, answers, model_id=model_id))
    console.print(f"{result.model_id}: {result.new_answers} new answers of {result.questions} questions",
                  highlight=False)


@eval_app.command("run")
def run_command(
    name: NameOption,
    model: Annotated[
        list[str], typer.Option("--model", metavar="[ID=]CKPT", help="Model under test, repeatable: a checkpoint "
                                "folder (ID= names it), or with --backend openai an endpoint's model name")
    ],
    backend: Annotated[str, typer.Option(help="transformers | vllm (local checkpoints) | openai (an endpoint)")] = (
        "transformers"),
    answer_base_url: Annotated[
        str | None, typer.Option(help="--backend openai: the answering endpoint (default: --base-url)")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Local inference batch size")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Answer length cap")] = None,
    temperature: Annotated[float | None, typer.Option(help="Answer sampling temperature (default: greedy)")] = None,
    judge_model: Annotated[str, typer.Option(help="The judge LLM")] = _default("judge_model"),
    judge_base_url: Annotated[
        str | None, typer.Option(help="The judge's OpenAI-compatible endpoint (default: --base-url)")
    ] = None,
    judge_api_key_env: Annotated[
        str | None, typer.Option(help="Environment variable holding the judge's key (default: OPENAI_API_KEY)")
    ] = None,
    base_url: BaseUrlOption = None,
    swap: Annotated[bool, typer.Option("--swap", help="Judge each pair in both orders; report position bias")] = False,
    output_format: FormatOption = "structured",
    mode: ModeOption = "online",
    concurrency: ConcurrencyOption = _default("concurrency"),
    max_cost_usd: MaxCostOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Answer the set's questions with each model, judge every answer without a review, print the report."""
    from tasks.eval import judge, report, run, sets

    params = _params(name=name, checkpoints=model, backend=backend, answer_base_url=answer_base_url,
                     batch_size=batch_size, max_new_tokens=max_new_tokens, temperature=temperature,
                     judge_model=judge_model, judge_base_url=judge_base_url, judge_api_key_env=judge_api_key_env,
                     base_url=base_url, swap=swap,
                     output_format=output_format, mode=mode, concurrency=concurrency, max_cost_usd=max_cost_usd)
    path = store.resolve_db(db)
    _run(lambda: sets.require_set(path, name))
    log = (lambda line: err_console.print(line, markup=False, highlight=False)) if as_json else (
        lambda line: console.print(line, markup=False, highlight=False))
    for spec in params.checkpoints:
        done = _run(lambda spec=spec: run.answer_model(path, params, spec, on_line=log))
        log(f"answers of {done.model_id}: {done.new_answers} new, {done.already_answered} stored before, "
            f"{done.failed} missing")
    judged = _run(lambda: judge.judge(path, name, model_ids=run.model_ids(params),
                                      config=run.judge_config(params), swap=swap))
    log(f"judge {judged.judge_model}: {judged.new_reviews} new reviews, {judged.already_reviewed} stored before, "
        f"{len(judged.rejects)} rejected, {judged.failed} without an answer (${judged.stats.cost_usd:.4f})")
    for line in judged.rejects[:10]:
        log(f"  rejected {line}")
    _print_report(_run(lambda: report.report(path, name, judge_model=judged.judge_model)), as_json)


def _print_report(result: dict[str, Any], as_json: bool) -> None:
    from tasks.eval.report import markdown_table

    if as_json:
        print(json.dumps(result, indent=1))
        return
    console.print(f"eval set {result['set']}, judge {result['judge_model']}: relative score (mean candidate / mean "
                  "reference x 100) with its 95% bootstrap interval", highlight=False)
    console.print(markdown_table(result), markup=False, highlight=False)


@eval_app.command("report")
def report_command(
    name: NameOption,
    judge_model: Annotated[str | None, typer.Option(help="Reviews of this judge (needed when several judged)")] = None,
    as_json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """Relative score per category and overall (95% bootstrap interval), side by side for every model judged."""
    from tasks.eval.report import report

    _print_report(_run(lambda: report(store.resolve_db(db), name, judge_model=judge_model)), as_json)
