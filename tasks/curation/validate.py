"""Validation: raw LLM responses -> `samples` rows, or `rejects` rows with one reason code each.

`validate_output` is pure (used by `vistune validate-text` and by anyone checking one response);
`validate_pending` runs it over every response with content that has neither a sample nor a reject yet,
so reruns add nothing. The content rules live in `tasks/curation/rules.py`, their thresholds in
`schemas.curation.ContentThresholds`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from schemas.curation import ContentThresholds, Reject, RejectCode, ValidationResult
from schemas.eval import EVAL_SAMPLE_TYPE_PREFIX
from schemas.samples import SampleOutput, question_answer_pairs
from schemas.samples import sample_type as lookup_sample_type
from schemas.tables import RejectRow, SampleRow
from tasks.curation.rules import CONTENT_RULES, REFUSAL
from tasks.prompting.formats import OutputFormatError, check_format, parse
from tasks.store import insert_rows, read, stable_hash, utcnow, write

# Provider finish reasons that mean the text is not the model's complete answer.
_FINISH_REJECTS = {"length": RejectCode.TRUNCATED, "content_filter": RejectCode.CONTENT_FILTER}


def validate_output(
    sample_type: str,
    output_format: str,
    content: str | None,
    finish_reason: str | None = None,
    thresholds: ContentThresholds | None = None,
) -> ValidationResult:
    """Parse one raw response and apply every content rule; `output` is set only when nothing failed."""
    thresholds = thresholds or ContentThresholds()
    check_format(output_format)  # the caller's mistake (ValueError), not a parser bug
    lookup_sample_type(sample_type)
    rejects: list[Reject] = []
    if finish_reason in _FINISH_REJECTS:
        rejects.append(Reject(code=_FINISH_REJECTS[finish_reason], detail=f"finish_reason is {finish_reason!r}"))
    if content is None or not content.strip():
        return ValidationResult(rejects=[*rejects, Reject(code=RejectCode.EMPTY, detail="response has no content")])
    try:
        output = parse(sample_type, output_format, content)
    except OutputFormatError as exc:
        rejects.append(Reject(code=RejectCode.MALFORMED, detail=f"{output_format} {sample_type}: {exc}"))
        # A refusal is usually plain prose, so it fails to parse; say so rather than only "malformed".
        if REFUSAL.search(content):
            rejects.append(Reject(code=RejectCode.REFUSAL, detail=f"unparsed content refuses: {content[:80]!r}"))
        return ValidationResult(rejects=rejects)
    except Exception as exc:  # a bug in our parser: one reject, not a crash of the whole pass
        detail = f"{output_format} {sample_type}: parser raised {exc!r}"[:1000]
        return ValidationResult(rejects=[*rejects, Reject(code=RejectCode.PARSE_ERROR, detail=detail)])
    turns = question_answer_pairs(output)
    codes = {r.code for r in rejects}
    for rule in CONTENT_RULES:
        rejects.extend(r for r in rule(turns, sample_type, thresholds) if r.code not in codes)
        codes = {r.code for r in rejects}
    return ValidationResult(output=None if rejects else output, rejects=rejects)


def sample_text(output: SampleOutput) -> str:
    """All question and answer text of a sample, one turn per line: the input to dedup."""
    return "\n".join(text for pair in question_answer_pairs(output) for text in pair if text is not None)


def sample_id_for(response_id: str) -> str:
    """A sample's id, derived from its response so reruns produce the same id."""
    return stable_hash("sample", response_id)


@dataclass
class ValidateStats:
    """What one `validate_pending` call did."""

    checked: int = 0
    samples: int = 0
    rejected: int = 0
    reject_codes: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (for logs and Prefect artifacts)."""
        return asdict(self)


# Responses with content, plus refusals: OpenAI's structured-output refusal has no content, only
# `message.refusal`, which the engine keeps in `error`. Eval requests (schemas/eval.py) are no samples.
PENDING_PAGE = 50_000  # pending rows read at once (a few KB each)
# One page: the next PENDING_PAGE responses after the cursor (`response_id` order) with content, or refusals,
# that have neither a sample nor a reject, as a Top-N over `responses` alone; then only that page joins its
# requests. Samples and rejects at or before the cursor cannot match, so the anti-joins read only those after
# it (in a first pass, none). Joining every pending response to `requests` first built a hash table of all of
# them, contents included, for each page: DuckDB's whole memory at 1.58M (docs/BENCHMARKS.md).
_PENDING_PAGE_SQL = """
SELECT r.response_id, r.request_id, r.content, r.finish_reason, r.status, r.error,
       q.image_id, q.sample_type, q.prompt_version, q.model, q.output_format
FROM (SELECT response_id, request_id, content, finish_reason, status, error FROM responses r
      WHERE (r.content IS NOT NULL OR r.status = 'refusal') AND r.response_id > $after
        AND NOT EXISTS (SELECT 1 FROM samples s WHERE s.response_id = r.response_id AND s.response_id > $after)
        AND NOT EXISTS (SELECT 1 FROM rejects j WHERE j.response_id = r.response_id AND j.response_id > $after)
      ORDER BY r.response_id LIMIT $page) r
LEFT JOIN requests_stored q USING (request_id)
ORDER BY r.response_id
"""


def validate_response(row: dict[str, Any], thresholds: ContentThresholds | None = None) -> ValidationResult:
    """Validate one stored response (a `_PENDING_PAGE_SQL` row), adding what its engine status already says."""
    if row["status"] == "refusal":
        refused = Reject(code=RejectCode.REFUSAL, detail=row.get("error") or "the model refused")
        if row["content"] is None or not row["content"].strip():
            return ValidationResult(rejects=[refused])
        result = validate_output(row["sample_type"], row["output_format"], row["content"], row["finish_reason"],
                                 thresholds)
        if RejectCode.REFUSAL in {r.code for r in result.rejects}:
            return _name_response(result, row["response_id"])
        return _name_response(ValidationResult(rejects=[*result.rejects, refused]), row["response_id"])
    result = validate_output(row["sample_type"], row["output_format"], row["content"], row["finish_reason"],
                             thresholds)
    return _name_response(result, row["response_id"])


def _name_response(result: ValidationResult, response_id: str) -> ValidationResult:
    # A parse_error reject names the response, so the failing content can be found and replayed.
    if not any(r.code is RejectCode.PARSE_ERROR for r in result.rejects):
        return result
    rejects = [Reject(code=r.code, detail=f"response {response_id}: {r.detail}") if r.code is RejectCode.PARSE_ERROR
               else r for r in result.rejects]
    return ValidationResult(output=result.output, rejects=rejects)


def _pending_batches(db_path: str | Path | None, batch_size: int) -> Iterator[list[dict[str, Any]]]:
    """The responses to validate (`_PENDING_PAGE_SQL` rows) in batches, read `PENDING_PAGE` at a time.

    Memory stays flat however many responses wait (1.58M at 10x LLaVA's size, bench/gen_scale.py); no read
    connection is open while the caller writes a batch. Eval answers (schemas/eval.py) are no samples: skipped,
    as are responses whose request row is missing (the engine stores none such).
    """
    after = ""
    while True:
        with read(db_path) as con:
            cursor = con.execute(_PENDING_PAGE_SQL, {"after": after, "page": PENDING_PAGE})
            names = [d[0] for d in cursor.description]
            page = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        if not page:
            return
        after = page[-1]["response_id"]
        page = [row for row in page
                if row["sample_type"] is not None and not row["sample_type"].startswith(EVAL_SAMPLE_TYPE_PREFIX)]
        for start in range(0, len(page), batch_size):
            yield page[start : start + batch_size]


def validate_pending(
    db_path: str | Path | None = None, thresholds: ContentThresholds | None = None, batch_size: int = 5000
) -> ValidateStats:
    """Validate every response with content not yet turned into a sample or a reject; idempotent."""
    stats = ValidateStats()
    codes: Counter[str] = Counter()
    for batch in _pending_batches(db_path, batch_size):
        samples: list[SampleRow] = []
        rejects: list[RejectRow] = []
        now = utcnow()
        for row in batch:
            result = validate_response(row, thresholds)
            if result.ok:
                samples.append(SampleRow(
                    sample_id=sample_id_for(row["response_id"]), request_id=row["request_id"],
                    response_id=row["response_id"], image_id=row["image_id"], sample_type=row["sample_type"],
                    prompt_version=row["prompt_version"], model=row["model"],
                    data=result.output.model_dump(), text=sample_text(result.output), created_at=now,
                ))
            for reject in result.rejects:
                codes[reject.code.value] += 1
                rejects.append(RejectRow(
                    response_id=row["response_id"], request_id=row["request_id"], image_id=row["image_id"],
                    sample_type=row["sample_type"], code=reject.code.value, detail=reject.detail, created_at=now,
                ))
        with write(db_path) as con:  # one short transaction per batch
            stats.samples += insert_rows(con, SampleRow, samples)
            insert_rows(con, RejectRow, rejects)
        stats.checked += len(batch)
        stats.rejected += len({r.response_id for r in rejects})
    stats.reject_codes = dict(sorted(codes.items()))
    return stats
