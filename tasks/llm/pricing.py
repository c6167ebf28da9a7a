"""What a call costs, from the one editable price table `tasks/llm/prices.toml`."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PRICES_FILE = Path(__file__).with_name("prices.toml")


class UnknownModelPrice(KeyError):
    """The model has no entry in the price table."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class ModelPrice:
    """USD per million tokens."""

    input: float
    cached_input: float
    output: float


@lru_cache(maxsize=4)
def _table(path: Path = PRICES_FILE) -> tuple[dict[str, ModelPrice], float]:
    data = tomllib.loads(path.read_text())
    models = {
        name: ModelPrice(input=p["input"], cached_input=p.get("cached_input", p["input"]), output=p["output"])
        for name, p in data.get("models", {}).items()
    }
    return models, float(data.get("batch_discount", 0.5))


def price(model: str, path: Path = PRICES_FILE) -> ModelPrice:
    """The model's price: its own entry, else the longest entry its name starts with."""
    models, _ = _table(path)
    if model in models:
        return models[model]
    prefixes = [name for name in models if model.startswith(name)]
    if not prefixes:
        raise UnknownModelPrice(
            f"no price for model {model!r} in {path}; add a [models.\"{model}\"] entry (USD per 1M tokens)"
        )
    return models[max(prefixes, key=len)]


def known(model: str) -> bool:
    """Whether the price table covers the model."""
    try:
        price(model)
    except UnknownModelPrice:
        return False
    return True


def cost_usd(
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
    *,
    batch: bool = False,
) -> float:
    """Cost of one call; 0.0 for a model without a price (the CLI warns about it up front)."""
    try:
        p = price(model)
    except UnknownModelPrice:
        return 0.0
    uncached = max(prompt_tokens - cached_tokens, 0)
    usd = (uncached * p.input + cached_tokens * p.cached_input + completion_tokens * p.output) / 1_000_000
    return usd * _table()[1] if batch else usd
