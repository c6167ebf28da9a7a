"""What a plan would cost before anything is sent: requests, tokens, and dollars online vs batch.

Input tokens are the plan's `est_input_tokens`: text by the tokenizer and, for image-grounded prompt sets,
each image part by the provider's tile formula with the model's figures from `prices.toml`
(`pricing.image_tokens`), so the dollars include the pictures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from schemas.samples import SAMPLE_TYPES
from tasks import store
from tasks.llm import pricing
from tasks.llm.pool import EndpointEntry
from tasks.prompting.plan import PlanResult

# Expected completion tokens per sample type while the database has no answers to learn from.
DEFAULT_OUTPUT_TOKENS = {name: t.default_output_tokens for name, t in SAMPLE_TYPES.items()}


@dataclass
class Estimate:
    """The cost of sending a plan's pending requests."""

    requests: int
    input_tokens: int
    output_tokens: int
    online_usd: float | None  # None: the model has no price in tasks/llm/prices.toml
    batch_usd: float | None
    output_source: str  # "observed" (mean of stored ok answers) or "default"
    images_unavailable: int = 0  # image-grounded sets: images skipped, their file missing or unreadable


def priced_models() -> list[str]:
    """Every model of the price table, in its order (`vistune estimate --recipe` prices each)."""
    return list(pricing._table()[0])


def batch_discount() -> float:
    """What the Batch API charges, as a fraction of the online price."""
    return pricing._table()[1]


def expected_output_tokens(db_path: str | Path | None, model: str) -> tuple[dict[str, float], str]:
    """Mean completion tokens per sample type from stored ok answers of the model, else defaults."""
    try:
        rows = store.query(
            "SELECT q.sample_type, avg(r.completion_tokens) AS tokens FROM responses r "
            "JOIN requests q USING (request_id) WHERE r.status = 'ok' AND q.model = ? GROUP BY 1",
            [model], path=db_path,
        )
    except FileNotFoundError:
        rows = []
    observed = {r["sample_type"]: float(r["tokens"]) for r in rows}
    if observed:
        return {**DEFAULT_OUTPUT_TOKENS, **observed}, "observed"
    return dict(DEFAULT_OUTPUT_TOKENS), "default"


def estimate(plan: PlanResult, model: str, db_path: str | Path | None = None) -> Estimate:
    """Tokens and cost of the plan's pending requests (prompt caching ignored: an upper bound on input)."""
    per_type, source = expected_output_tokens(db_path, model)
    output = int(sum(n * per_type.get(t, 300) for t, n in plan.by_type.items()))
    online = batch = None
    if pricing.known(model):
        online = pricing.cost_usd(model, plan.est_input_tokens, output)
        batch = pricing.cost_usd(model, plan.est_input_tokens, output, batch=True)
    return Estimate(plan.pending, plan.est_input_tokens, output, online, batch, source, plan.images_unavailable)


@dataclass
class EndpointCost:
    """What the whole plan would cost online at one endpoint of an endpoints file."""

    name: str
    priced_as: str
    rpm: float
    usd: float | None  # None: no price for `priced_as`


def endpoint_costs(est: Estimate, endpoints: Sequence[EndpointEntry], model: str) -> list[EndpointCost]:
    """The plan's online cost at each endpoint, as if it took every request (its own model's prices)."""
    out = []
    for entry in endpoints:
        priced_as = entry.spec.price_model or entry.spec.model or model
        usd = pricing.cost_usd(priced_as, est.input_tokens, est.output_tokens) if pricing.known(priced_as) else None
        out.append(EndpointCost(entry.spec.name, priced_as, entry.spec.rpm, usd))
    return out


def split_usd(costs: Sequence[EndpointCost]) -> float | None:
    """The plan's cost when each endpoint takes its rpm's share of the requests (a run at full load); None: unpriced."""
    if any(c.usd is None for c in costs):
        return None
    total_rpm = sum(c.rpm for c in costs)
    return sum(c.usd * c.rpm / total_rpm for c in costs)  # type: ignore[operator]
