"""The eval steps with their configs from `EvaluateParams`: set -> answers per model -> judge (-> report).

`tasks/pipeline.py` composes them for the `evaluate` flow, `pipeline` and the demo: `run_eval_set` (the set, before
export) and `run_evaluate` (answers, judge, report, after training); `vistune eval` calls them one by one. With
`infer_on="deployment"` the answers are made on another machine (`flows/evaluate.py` `infer_flow`), which first
checks its paths here (`check_inference_paths`). Every step resumes: a rerun asks only for what is not stored
(questions, references, answers, reviews), and the engine never pays twice for an answered call.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from schemas.flow_params import EvaluateParams
from schemas.generation import GenerateConfig
from tasks.eval import answers, calls, sets


def model_ids(params: EvaluateParams) -> list[str]:
    """The id each model under test is stored and reported under, in `params.checkpoints` order."""
    out = []
    for spec in params.checkpoints:
        given, target = answers.parse_model_spec(spec)
        out.append(given or (target if params.backend == "openai" else answers.model_id_for(target)))
    return out


def _config(params: EvaluateParams, api_key: SecretStr | None, budget_id: str | None, **fields: Any) -> GenerateConfig:
    return GenerateConfig(mode=params.mode, concurrency=params.concurrency, max_cost_usd=params.max_cost_usd,
                          format=params.output_format, budget_id=budget_id, api_key=api_key, **fields)


def writer_config(params: EvaluateParams, api_key: SecretStr | None = None,
                  budget_id: str | None = None) -> GenerateConfig:
    """The engine config of the question and reference writer."""
    return _config(params, api_key, budget_id, model=params.model, base_url=params.base_url)


def judge_config(params: EvaluateParams, api_key: SecretStr | None = None,
                 budget_id: str | None = None) -> GenerateConfig:
    """The judge's engine config: its own model, endpoint (default: the writer's) and key (`judge_api_key_env`)."""
    if params.judge_api_key_env:
        value = os.environ.get(params.judge_api_key_env)
        if not value:
            raise ValueError(f"judge_api_key_env names {params.judge_api_key_env}, which is not set")
        api_key = SecretStr(value)
    return _config(params, api_key, budget_id, model=params.judge_model,
                   base_url=params.judge_base_url or params.base_url)


def answer_config(params: EvaluateParams, model: str, api_key: SecretStr | None = None,
                  budget_id: str | None = None) -> GenerateConfig:
    """backend=openai: the engine config of the answering endpoint (greedy unless a temperature is given)."""
    return _config(params, api_key, budget_id, model=model, base_url=params.answer_base_url or params.base_url,
                   temperature=params.temperature or 0.0, max_tokens=params.max_new_tokens or 1024)


def prepare_set(db: Path, params: EvaluateParams, config: GenerateConfig | None = None,
                on_progress: calls.ProgressCallback | None = None) -> sets.SetResult:
    """Import the LLaVA-Bench files when `params.questions` is set, else build from held-out images; resumes."""
    if params.questions:
        missing = [flag for flag, value in (("context", params.context), ("image_root", params.image_root))
                   if not value]
        if missing:
            raise ValueError(f"importing {params.questions} needs {' and '.join(missing)} too")
        return sets.import_llava_bench(db, params.name, questions=params.questions, context=params.context or "",
                                       image_root=params.image_root or "", answers=params.answers, config=config,
                                       on_progress=on_progress)
    return sets.build_set(db, params.name, split=params.split, per_category=params.per_category, seed=params.seed,
                          config=config, on_progress=on_progress)


def answer_model(db: Path, params: EvaluateParams, spec: str, *, api_key: SecretStr | None = None,
                 budget_id: str | None = None, on_line: Callable[[str], None] = print,
                 on_progress: calls.ProgressCallback | None = None) -> answers.AnswerResult:
    """One model under test answers the set's unanswered questions (`spec`: `[ID=]CHECKPOINT` or, with
    backend=openai, the endpoint's model name)."""
    given, target = answers.parse_model_spec(spec)
    if params.backend == "openai":
        return answers.openai_answers(db, params.name, model=target, model_id=given, on_progress=on_progress,
                                      config=answer_config(params, target, api_key, budget_id))
    return answers.local_answers(db, params.name, target, model_id=given, backend=params.backend,
                                 batch_size=params.batch_size, max_new_tokens=params.max_new_tokens,
                                 temperature=params.temperature, on_line=on_line, timeout_s=params.infer_timeout_s)


# ---------------------------------------------------------------- inference on another machine
class InferencePathsMissing(RuntimeError):
    """A path the inference needs is missing on this machine (`infer_on=deployment`); the message names each."""


def missing_inference_paths(db: Path, params: EvaluateParams) -> list[str]:
    """Every path local inference of `params.checkpoints` needs that this machine cannot see, one line each: the
    database, each checkpoint folder, each image root of the set, and a writable folder beside the database (its
    `eval/` question and answer files). Empty: inference can start. Relative paths resolve against this process's
    folder, as in the `python -m training infer` it launches."""
    from tasks.store import query

    if not db.is_file():
        return [f"database {db.resolve()} does not exist"]  # nothing else can be read without it
    problems = []
    for spec in params.checkpoints:
        checkpoint = Path(answers.parse_model_spec(spec)[1]).expanduser()
        if not checkpoint.is_dir():
            problems.append(f"checkpoint {checkpoint.resolve()} "
                            f"{'is not a folder' if checkpoint.exists() else 'does not exist'}")
    roots = query("SELECT DISTINCT image_root FROM eval_images WHERE set_name = ? ORDER BY 1", [params.name], path=db)
    problems += [f"image root {r['image_root']} of eval set {params.name!r} does not exist"
                 for r in roots if not Path(r["image_root"]).is_dir()]
    if not os.access(db.parent, os.W_OK):
        problems.append(f"{db.parent.resolve()} (the eval/ answer files beside the database) is not writable")
    return problems


def check_inference_paths(db: Path, params: EvaluateParams) -> None:
    """Raise `InferencePathsMissing` naming every path `missing_inference_paths` finds, and the machine."""
    from tasks.train_paths import machine

    if problems := missing_inference_paths(db, params):
        raise InferencePathsMissing(
            f"inference cannot start on {machine()}: " + "; ".join(problems)
            + " (on two machines, every path must be on storage both see, at the same absolute path)")


def answer_counts(db: Path, params: EvaluateParams) -> dict[str, int]:
    """Answers stored per model id of `params.checkpoints` (how an answering run elsewhere is summed up here)."""
    from tasks.store import query

    ids = model_ids(params)
    stored = {r["model_id"]: r["n"] for r in query(
        "SELECT model_id, count(*) AS n FROM eval_answers WHERE set_name = ? AND model_id IN ? GROUP BY 1",
        [params.name, ids], path=db)} if ids else {}
    return {model_id: stored.get(model_id, 0) for model_id in ids}
