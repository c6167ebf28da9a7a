"""The eval report: relative score per category and overall, with a bootstrap interval, for every model judged.

Per question, the judge's two scores (reference, candidate) are averaged over the orders it was judged in (one,
or two with `--swap`). A category's relative score is mean(candidate) / mean(reference) x 100 over its
questions (LLaVA's summary); `all` does the same over every question. The 95% interval comes from a seeded
percentile bootstrap: questions are resampled with replacement (within the category; across the set for `all`)
`n_boot` times and the ratio recomputed. With both orders judged, `position_bias` is the mean number of points an
answer gains by being shown as Assistant 1, and `candidate_minus_reference` gives mean(candidate - reference)
per order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from schemas.eval import EVAL_CATEGORIES
from tasks import store
from tasks.eval.sets import require_set

N_BOOT = 2000
SEED = 0
BAR_WIDTH = 30  # characters of the longest bar (100 %, or the best score above it) in the markdown chart


def relative_score(reference: Sequence[float], candidate: Sequence[float]) -> float | None:
    """mean(candidate) / mean(reference) x 100; None without questions or with a reference mean of 0."""
    if not len(reference):
        return None
    ref = float(np.mean(reference))
    return None if ref == 0 else float(np.mean(candidate)) / ref * 100


def bootstrap_interval(
    reference: Sequence[float], candidate: Sequence[float], *, n_boot: int = N_BOOT, seed: int = SEED,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """The percentile bootstrap interval of `relative_score`, resampling questions (pairs) with replacement."""
    ref, cand = np.asarray(reference, dtype=float), np.asarray(candidate, dtype=float)
    if ref.size == 0:
        return None
    idx = np.random.default_rng(seed).integers(0, ref.size, size=(n_boot, ref.size))
    ref_means = ref[idx].mean(axis=1)
    ratios = cand[idx].mean(axis=1)[ref_means > 0] / ref_means[ref_means > 0] * 100
    if ratios.size == 0:
        return None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(low), float(high)


def position_bias(rows: Sequence[dict[str, Any]]) -> tuple[float | None, dict[str, float | None]]:
    """(mean points an answer gains as Assistant 1, mean(candidate - reference) per order) from review rows.

    The gain is measured on pairs judged in both orders: the reference's forward score minus its swapped score,
    and the candidate's swapped score minus its forward score, averaged.
    """
    by_pair: dict[tuple[str, int], dict[str, tuple[int, int]]] = defaultdict(dict)
    diffs: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        by_pair[(r["model_id"], r["question_id"])][r["pair_order"]] = (r["score_reference"], r["score_candidate"])
        diffs[r["pair_order"]].append(r["score_candidate"] - r["score_reference"])
    gains = [((o["forward"][0] - o["swapped"][0]) + (o["swapped"][1] - o["forward"][1])) / 2
             for o in by_pair.values() if "forward" in o and "swapped" in o]
    by_order = {order: (float(np.mean(d)) if d else None) for order, d in
                (("forward", diffs.get("forward", [])), ("swapped", diffs.get("swapped", [])))}
    return (float(np.mean(gains)) if gains else None), by_order


def summarize(rows: Sequence[dict[str, Any]], *, n_boot: int = N_BOOT, seed: int = SEED) -> dict[str, Any]:
    """The report of one model from its review rows (`model_id`, `question_id`, `category`, `pair_order`,
    `score_reference`, `score_candidate`)."""
    per_question: dict[int, dict[str, Any]] = {}
    for r in rows:
        q = per_question.setdefault(r["question_id"], {"category": r["category"], "ref": [], "cand": []})
        q["ref"].append(r["score_reference"])
        q["cand"].append(r["score_candidate"])
    pairs = {qid: (float(np.mean(q["ref"])), float(np.mean(q["cand"])), q["category"])
             for qid, q in sorted(per_question.items())}
    out: dict[str, Any] = {}
    ci: dict[str, list[float] | None] = {}
    means: dict[str, dict[str, float | None]] = {}
    n_questions: dict[str, int] = {}
    for category in (*EVAL_CATEGORIES, "all"):
        chosen = [p for p in pairs.values() if category == "all" or p[2] == category]
        ref, cand = [p[0] for p in chosen], [p[1] for p in chosen]
        score = relative_score(ref, cand)
        out[category] = None if score is None else round(score, 2)
        interval = bootstrap_interval(ref, cand, n_boot=n_boot, seed=seed)
        ci[category] = None if interval is None else [round(interval[0], 2), round(interval[1], 2)]
        means[category] = {"reference": round(float(np.mean(ref)), 3) if ref else None,
                           "candidate": round(float(np.mean(cand)), 3) if cand else None}
        n_questions[category] = len(chosen)
    bias, by_order = position_bias(rows)
    out.update({"n_reviews": len(rows), "n_questions": n_questions, "ci95": ci, "mean_scores": means,
                "position_bias": None if bias is None else round(bias, 3),
                "candidate_minus_reference": {k: None if v is None else round(v, 3) for k, v in by_order.items()}})
    return out


def report(
    db: str | Path | None, name: str, *, judge_model: str | None = None, n_boot: int = N_BOOT, seed: int = SEED,
) -> dict[str, Any]:
    """`{"set", "judge_models", "models": {model_id: summary}}` for every model with reviews on the set."""
    db = store.resolve_db(db)
    require_set(db, name)
    judges = [r["judge_model"] for r in store.query(
        "SELECT DISTINCT judge_model FROM eval_reviews WHERE set_name = ? ORDER BY 1", [name], path=db)]
    if judge_model is None and len(judges) > 1:
        raise ValueError(f"eval set {name!r} was judged by {', '.join(judges)}: choose one with --judge-model")
    judge = judge_model or (judges[0] if judges else None)
    rows = store.query(
        "SELECT model_id, question_id, category, pair_order, score_reference, score_candidate FROM eval_reviews "
        "WHERE set_name = ? AND judge_model = ? ORDER BY model_id, question_id, pair_order", [name, judge], path=db)
    rejects = {r["model_id"]: r["n"] for r in store.query(
        "SELECT model_id, count(*) AS n FROM eval_rejects j WHERE set_name = ? AND stage = 'review' AND NOT EXISTS "
        "(SELECT 1 FROM eval_reviews v WHERE v.request_id = j.request_id) GROUP BY 1", [name], path=db)}
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_model[r["model_id"]].append(r)
    models = {}
    for model_id, model_rows in sorted(by_model.items()):
        models[model_id] = summarize(model_rows, n_boot=n_boot, seed=seed) | {"n_rejects": rejects.get(model_id, 0)}
    return {"set": name, "judge_model": judge, "models": models}


def _cell(summary: dict[str, Any], category: str) -> str:
    score, ci = summary.get(category), summary["ci95"].get(category)
    if score is None:
        return "–"
    return f"{score:.1f} [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else f"{score:.1f}"


def markdown_table(result: dict[str, Any]) -> str:
    """Relative scores (95% interval) per category, one column per model."""
    models = result["models"]
    if not models:
        return f"_No reviews on eval set `{result['set']}` yet._\n"
    ids = list(models)
    lines = ["| category | " + " | ".join(f"`{m}`" for m in ids) + " |", "|---|" + "---|" * len(ids)]
    for category in (*EVAL_CATEGORIES, "all"):
        lines.append(f"| {category} | " + " | ".join(_cell(models[m], category) for m in ids) + " |")
    lines.append("| reviews | " + " | ".join(str(models[m]["n_reviews"]) for m in ids) + " |")
    lines.append("| rejected reviews | " + " | ".join(str(models[m]["n_rejects"]) for m in ids) + " |")
    if any(models[m]["position_bias"] is not None for m in ids):
        lines.append("| position bias (points to Assistant 1) | " + " | ".join(
            "–" if models[m]["position_bias"] is None else f"{models[m]['position_bias']:+.2f}" for m in ids) + " |")
    return "\n".join(lines) + "\n"


def bar_chart_markdown(result: dict[str, Any]) -> str:
    """A bar chart as a markdown table (block characters; renders in the Prefect UI and any markdown viewer)."""
    lines = ["| model | category | relative score | |", "|---|---|---|---|"]
    scores = [s.get(c) for s in result["models"].values() for c in (*EVAL_CATEGORIES, "all")]
    top = max([100.0, *(s for s in scores if s is not None)])  # 100 % is the reference; a better model goes past it
    for model_id, summary in result["models"].items():
        for category in (*EVAL_CATEGORIES, "all"):
            score = summary.get(category)
            if score is None:
                continue
            bar = "█" * max(0, round(score / top * BAR_WIDTH)) or "▏"
            lines.append(f"| `{model_id}` | {category} | {score:.1f}% | `{bar}` |")
    return "\n".join(lines) + "\n"


def bar_chart_png(result: dict[str, Any]) -> bytes | None:
    """Relative score per category, one bar per model, with the 95% interval as error bars (PNG); None: no scores."""
    import io

    from matplotlib.figure import Figure

    models = list(result["models"])
    if not models:
        return None
    categories = [*EVAL_CATEGORIES, "all"]
    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    width = 0.8 / len(models)
    for i, model_id in enumerate(models):
        summary = result["models"][model_id]
        xs = [c + (i - (len(models) - 1) / 2) * width for c in range(len(categories))]
        ys = [summary.get(c) or 0.0 for c in categories]
        ci = [summary["ci95"].get(c) or [y, y] for c, y in zip(categories, ys, strict=True)]
        err = [[max(0.0, y - lo) for y, (lo, _) in zip(ys, ci, strict=True)],
               [max(0.0, hi - y) for y, (_, hi) in zip(ys, ci, strict=True)]]
        ax.bar(xs, ys, width, yerr=err, capsize=3, label=model_id)
    ax.axhline(100, color="grey", linewidth=0.8, linestyle="--")  # the reference answers
    ax.set_xticks(range(len(categories)), categories)
    ax.set_ylabel("relative score (%)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100)
    return out.getvalue()


def markdown_report(result: dict[str, Any], *, embed_chart: bool = False) -> str:
    """The whole report as markdown (the flow's artifact); `embed_chart` inlines the PNG chart as a data URI
    (the Prefect UI renders it), after the table-based chart that renders anywhere."""
    import base64

    text = (f"# Evaluation of set `{result['set']}`\n\nJudge: `{result['judge_model']}`. Relative score = mean "
            "candidate score / mean reference score x 100 (95% bootstrap interval).\n\n"
            f"{markdown_table(result)}\n## Chart\n\n{bar_chart_markdown(result)}")
    png = bar_chart_png(result) if embed_chart else None
    if png:
        text += f"\n![relative score per category](data:image/png;base64,{base64.b64encode(png).decode('ascii')})\n"
    return text


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (model, category) for a table artifact."""
    rows = []
    for model_id, summary in result["models"].items():
        for category in (*EVAL_CATEGORIES, "all"):
            ci = summary["ci95"].get(category) or [None, None]
            means = summary["mean_scores"][category]
            rows.append({"model": model_id, "category": category, "relative_score": summary.get(category),
                         "ci95_low": ci[0], "ci95_high": ci[1], "reference_mean": means["reference"],
                         "candidate_mean": means["candidate"], "questions": summary["n_questions"][category]})
    return rows
