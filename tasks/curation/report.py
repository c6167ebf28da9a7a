"""The dataset report: what the curated data holds and what it cost, as markdown, tables and PNG plots.

`build_report` reads the database only and writes `report.md` plus PNGs into the export folder. The
curate flow shows the same markdown and tables in the Prefect UI (`flows/curate.py`).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# `Figure` renders with Agg and keeps no global pyplot state: safe on servers, workers and threads.
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from schemas.eval import EVAL_SAMPLE_TYPE_PREFIX
from schemas.samples import SAMPLE_TYPES, question_answer_pairs, sample_type
from tasks.curation.export import stored_missing_summary
from tasks.store import read

REPORT_FILE = "report.md"
PLOT_WIDTH_IN = 12  # x PLOT_DPI = 1200 px: readable in the Prefect UI's artifact pane
PLOT_DPI = 100
_IMAGE_LINK = re.compile(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)")


@dataclass
class Report:
    """The report's markdown, its tables (name -> rows as dicts) and the PNG files it wrote."""

    markdown: str
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    plots: list[Path] = field(default_factory=list)
    path: Path | None = None

    def embedded_markdown(self) -> str:
        """The markdown with each plot inlined as a `data:` URI (for the Prefect UI).

        The UI cannot reach files beside the report, so relative image links show as alt text there;
        `report.md` on disk keeps the relative links. Each PNG is a few tens of KB.
        """
        base = self.path.parent if self.path else Path(".")
        return embed_images(self.markdown, base)


def embed_images(markdown: str, base: Path) -> str:
    """Replace `![alt](file.png)` links to existing files under `base` by `data:image/png;base64,` URIs."""

    def inline(match: re.Match[str]) -> str:
        png = base / match.group(2)
        if not png.is_file():
            return match.group(0)
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        return f"![{match.group(1)}](data:image/png;base64,{data})"

    return _IMAGE_LINK.sub(inline, markdown)


def _rows(con, sql: str) -> list[dict[str, Any]]:
    cursor = con.execute(sql)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "_none_\n"
    header = list(rows[0])

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.4f}" if abs(value) < 1 else f"{value:,.2f}"
        return f"{value:,}" if isinstance(value, int) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(r[h]) for h in header) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def type_mix(counts: dict[str, int], targets: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Samples per type against the target (images planned for the type: the run's `--mix`, else every image)
    and against LLaVA-Instruct-158K's mix."""
    total = sum(counts.values()) or 1
    paper_total = sum(t.paper_count for t in SAMPLE_TYPES.values())
    targets = targets or {}
    return [
        {"sample_type": name, "target": targets.get(name, 0), "samples": counts.get(name, 0),
         "of_target": round(counts.get(name, 0) / targets[name], 4) if targets.get(name) else 0.0,
         "share": round(counts.get(name, 0) / total, 4),
         "llava_158k": t.paper_count, "llava_share": round(t.paper_count / paper_total, 4)}
        for name, t in SAMPLE_TYPES.items()
    ]


def _answer_lengths(samples: list[tuple[str, str]]) -> tuple[dict[str, list[int]], dict[int, int]]:
    lengths: dict[str, list[int]] = {name: [] for name in SAMPLE_TYPES}
    rounds: dict[int, int] = {}
    for type_name, data in samples:
        output = sample_type(type_name).output_model.model_validate(json.loads(data))
        pairs = question_answer_pairs(output)
        lengths.setdefault(type_name, []).extend(len(answer.split()) for _, answer in pairs)
        if sample_type(type_name).multi_round:
            rounds[len(pairs)] = rounds.get(len(pairs), 0) + 1
    return lengths, rounds


def _plot_lengths(lengths: dict[str, list[int]], path: Path) -> Path:
    fig = Figure(figsize=(PLOT_WIDTH_IN, 4))
    axes = fig.subplots(1, len(lengths), squeeze=False)
    for ax, (name, values) in zip(axes[0], lengths.items(), strict=True):
        ax.hist(values or [0], bins=30, color="#4C72B0")
        ax.set_title(f"{name} (n={len(values)})", fontsize=10)
        ax.set_xlabel("answer length (words)")
        ax.set_ylabel("answers")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: no 0.5-answer ticks
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle("Answer length per sample type", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI, metadata={"Software": None})
    return path


def _plot_mix(mix: list[dict[str, Any]], path: Path) -> Path:
    fig = Figure(figsize=(PLOT_WIDTH_IN, 4))
    ax = fig.subplots()
    names = [r["sample_type"] for r in mix]
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [r["share"] for r in mix], width=0.4, label="this dataset")
    ax.bar([i + 0.2 for i in x], [r["llava_share"] for r in mix], width=0.4, label="LLaVA-Instruct-158K")
    for i, r in zip(x, mix, strict=True):  # the sample count on top of this dataset's bar
        ax.annotate(f"{r['samples']:,}", (i - 0.2, r["share"]), ha="center", va="bottom", fontsize=9)
    ax.set_xticks(list(x), names, fontsize=10)
    ax.set_title("Sample types: this dataset vs LLaVA-Instruct-158K", fontsize=12)
    ax.set_xlabel("sample type")
    ax.set_ylabel("share of samples")
    ax.set_ylim(0, max([1e-9, *(max(r["share"], r["llava_share"]) for r in mix)]) * 1.15)
    ax.legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI, metadata={"Software": None})
    return path


# A request of generation, not of evaluation (whose sample types are `eval:<stage>`)
GENERATION = f"NOT starts_with(sample_type, '{EVAL_SAMPLE_TYPE_PREFIX}')"


def build_report(db_path: str | Path | None, out_dir: str | Path) -> Report:
    """Counts per type vs LLaVA's mix, rounds, answer lengths, rejects, cost and dedup, written to out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with read(db_path) as con:
        counts = dict(con.execute("SELECT sample_type, count(*) FROM dataset GROUP BY 1").fetchall())
        # The target of a type: the images planned for it (what a `--mix` drew, else every image planned)
        targets = dict(con.execute(f"SELECT sample_type, count(DISTINCT image_id) FROM requests WHERE {GENERATION} "
                                   "GROUP BY 1").fetchall())
        samples = con.execute("SELECT sample_type, data FROM dataset ORDER BY sample_id").fetchall()
        # Generation only: eval requests (questions, references, answers, reviews) are counted in their own table
        funnel = _rows(con, f"""
            WITH gen AS (SELECT r.* FROM responses r JOIN requests q USING (request_id) WHERE {GENERATION})
            SELECT (SELECT count(*) FROM requests WHERE {GENERATION}) AS requests,
                   (SELECT count(*) FROM gen) AS responses,
                   (SELECT count(*) FROM gen WHERE content IS NOT NULL) AS with_content,
                   (SELECT count(*) FROM samples) AS valid_samples,
                   (SELECT count(DISTINCT response_id) FROM rejects) AS rejected_responses,
                   (SELECT count(*) FROM duplicates) AS duplicates,
                   (SELECT count(*) FROM dataset) AS dataset
        """)
        rejects = _rows(con, """
            SELECT code, count(*) AS responses,
                   round(count(*) / greatest((SELECT count(*) FROM responses WHERE content IS NOT NULL), 1), 4) AS rate
            FROM rejects GROUP BY code ORDER BY responses DESC, code
        """)
        cost = _rows(con, f"""
            SELECT q.model, count(*) AS responses, sum(r.prompt_tokens) AS prompt_tokens,
                   sum(r.completion_tokens) AS completion_tokens, sum(r.cached_tokens) AS cached_tokens,
                   round(sum(r.cost_usd), 4) AS cost_usd,
                   -- money paid for answers that validation rejected (they are regenerated, and paid again)
                   round(coalesce(sum(r.cost_usd) FILTER (WHERE EXISTS (
                       SELECT 1 FROM rejects j WHERE j.response_id = r.response_id)), 0), 4) AS rejected_usd,
                   round(sum(r.cost_usd) / greatest((SELECT count(*) FROM dataset d WHERE d.model = q.model), 1), 6)
                       AS usd_per_kept_sample
            FROM responses r JOIN requests q USING (request_id) WHERE {GENERATION} GROUP BY q.model ORDER BY q.model
        """)
        eval_cost = _rows(con, f"""
            SELECT q.sample_type AS stage, q.model, count(*) AS responses, sum(r.prompt_tokens) AS prompt_tokens,
                   sum(r.completion_tokens) AS completion_tokens, round(sum(r.cost_usd), 4) AS cost_usd
            FROM responses r JOIN requests q USING (request_id) WHERE NOT ({GENERATION})
            GROUP BY 1, 2 ORDER BY 1, 2
        """)
        dedup = _rows(con, """
            SELECT method, scope, count(*) AS removed,
                   round(count(*) / greatest((SELECT count(*) FROM samples), 1), 4) AS rate,
                   round(avg(similarity), 4) AS mean_similarity
            FROM duplicates GROUP BY method, scope ORDER BY method, scope
        """)
    mix = type_mix(counts, targets)
    lengths, rounds = _answer_lengths(samples)
    length_rows = [
        {"sample_type": name, "answers": len(v), "mean_words": round(sum(v) / len(v), 1) if v else 0.0,
         "min_words": min(v, default=0), "max_words": max(v, default=0)}
        for name, v in lengths.items()
    ]
    round_rows = [{"rounds": k, "conversations": v} for k, v in sorted(rounds.items())]
    tables = {"funnel": funnel, "type_mix": mix, "rounds_per_conversation": round_rows,
              "answer_lengths": length_rows, "reject_reasons": rejects, "cost": cost, "eval_cost": eval_cost,
              "dedup": dedup}
    plots = [_plot_mix(mix, out / "type_mix.png"), _plot_lengths(lengths, out / "answer_lengths.png")]
    total_cost = sum(r["cost_usd"] or 0 for r in cost)
    rejected_cost = sum(r["rejected_usd"] or 0 for r in cost)
    eval_total = sum(r["cost_usd"] or 0 for r in eval_cost)
    paper_mix = " / ".join(f"{t.paper_count // 1000}K" for t in SAMPLE_TYPES.values())
    sections = [
        "# Dataset report\n",
        f"{funnel[0]['dataset']:,} samples in the dataset; generation cost ${total_cost:,.4f}, "
        f"of which ${rejected_cost:,.4f} on answers that were rejected; evaluation cost ${eval_total:,.4f}.\n",
        *([f"**Missing images:** {missing}\n"] if (missing := stored_missing_summary(out)) else []),
        "## Funnel\n", _markdown_table(funnel),
        f"## Sample types vs the target and LLaVA-Instruct-158K ({paper_mix})\n",
        "`target`: images planned for the type (the run's mix, else every image); "
        "`of_target`: samples kept / target.\n",
        _markdown_table(mix),
        "![type mix](type_mix.png)\n",
        "## Rounds per conversation\n", _markdown_table(round_rows),
        "## Answer lengths\n", _markdown_table(length_rows), "![answer lengths](answer_lengths.png)\n",
        "## Reject reasons (a response can have several)\n", _markdown_table(rejects),
        "## Cost\n", "Generation: the requests for samples.\n", _markdown_table(cost),
        "## Evaluation cost\n", "Eval sets (questions, references), answers of endpoints and judge reviews "
        "(`vistune eval`, the pipeline's eval-set and evaluate steps).\n", _markdown_table(eval_cost),
        "## Dedup\n", _markdown_table(dedup),
    ]
    markdown = "\n".join(sections)
    path = out / REPORT_FILE
    path.write_text(markdown, encoding="utf-8")
    return Report(markdown=markdown, tables=tables, plots=plots, path=path)
