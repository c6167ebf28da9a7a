"""validate_pending reads pending responses a page at a time (flat memory at 1.58M, issue 16) and misses none."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.samples import ConversationOutput, QuestionAnswer
from tasks.curation import validate
from tasks.prompting.formats import render
from tasks.store import query
from tests.curation_rows import add_response

GOOD = ConversationOutput(rounds=[
    QuestionAnswer(question="What is on the table?", answer="A red plate with two slices of pizza on it."),
    QuestionAnswer(question="Is anyone eating?", answer="Nobody is eating yet; the chairs are empty."),
])


def test_every_pending_response_is_validated_across_pages(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validate, "PENDING_PAGE", 3)
    ids = [add_response(db_path, image_id=i, sample_type="conversation", content=render(GOOD, "structured"),
                        output_format="structured") for i in range(1, 9)]
    ids.append(add_response(db_path, image_id=9, sample_type="conversation", content="too short",
                            output_format="structured"))
    stats = validate.validate_pending(db_path, batch_size=2)
    assert (stats.checked, stats.samples, stats.rejected) == (9, 8, 1)
    done = {r["response_id"] for r in query("SELECT response_id FROM samples UNION SELECT response_id FROM rejects",
                                             path=db_path)}
    assert done == set(ids)
    assert validate.validate_pending(db_path).checked == 0


def test_a_page_of_eval_answers_does_not_end_the_pass(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Eval answers are no samples: skipped, but the cursor passes them, so the samples after them are reached.
    monkeypatch.setattr(validate, "PENDING_PAGE", 2)
    content = render(GOOD, "structured")
    good = [add_response(db_path, image_id=i, sample_type="conversation", content=content,
                         output_format="structured") for i in (1, 2)]
    evals: list[str] = []
    image_id = 100
    while sum(rid < min(good) for rid in evals) < 2:  # at least one whole page of eval answers comes first
        evals.append(add_response(db_path, image_id=image_id, sample_type="eval:conversation", content=content,
                                  output_format="structured"))
        image_id += 1
    stats = validate.validate_pending(db_path)
    assert (stats.checked, stats.samples) == (2, 2)
    assert {r["response_id"] for r in query("SELECT response_id FROM samples", path=db_path)} == set(good)
