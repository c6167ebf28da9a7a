"""What a call costs, from the one editable price table `tasks/llm/prices.toml`.

Also the provider's image arithmetic (OpenAI's, which OpenAI-compatible servers copy): how an image part
is resized for its `detail` (`image_size`) and how many prompt tokens it costs (`image_tokens`, the tile
formula with per-model figures from the table). Domain-free: the prompting layer and `estimate` use it.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PRICES_FILE = Path(__file__).with_name("prices.toml")
# OpenAI's image limits: fit within 2048x2048, then the shortest side scaled down to 768 (high detail);
# tiles of 512x512 are counted. Low detail is one fixed-cost view: 512x512 holds all of it.
MAX_SIDE = 2048
HIGH_SHORT_SIDE = 768
TILE = 512
LOW_SIDE = 512
# (base, per tile) for a model whose entry has no image figures: gpt-4o's, the common case.
DEFAULT_IMAGE_TOKENS = (85, 170)
DETAILS = ("low", "high", "auto")


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
    image_base_tokens: int | None = None  # the tile formula's figures; None: DEFAULT_IMAGE_TOKENS
    image_tile_tokens: int | None = None


@lru_cache(maxsize=4)
def _table(path: Path = PRICES_FILE) -> tuple[dict[str, ModelPrice], float]:
    data = tomllib.loads(path.read_text())
    models = {
        name: ModelPrice(input=p["input"], cached_input=p.get("cached_input", p["input"]), output=p["output"],
                         image_base_tokens=p.get("image_base_tokens"), image_tile_tokens=p.get("image_tile_tokens"))
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


def _check_detail(detail: str) -> str:
    if detail not in DETAILS:
        raise ValueError(f"unknown image detail {detail!r}; expected one of {', '.join(DETAILS)}")
    return detail


def image_size(width: int, height: int, detail: str) -> tuple[int, int]:
    """The size an image is sent at for `detail` (never enlarged), as the provider would resize it.

    low: fit within 512x512. high and auto: fit within 2048x2048, then the shortest side down to 768.
    `auto` is treated as high (the provider may pick low; high is the upper bound for cost).
    Applying it to its own result returns the same size, so counting a resized image is stable.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if _check_detail(detail) == "low":
        scale = min(1.0, LOW_SIDE / max(width, height))
    else:
        # Both steps are down-scales of the same image, so the smaller factor is the result of the two.
        scale = min(1.0, MAX_SIDE / max(width, height), HIGH_SHORT_SIDE / min(width, height))
    if scale >= 1.0:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def image_token_figures(model: str) -> tuple[int, int]:
    """(base tokens, tokens per 512px tile) of the model: its price entry's, else `DEFAULT_IMAGE_TOKENS`."""
    try:
        p = price(model)
    except UnknownModelPrice:
        return DEFAULT_IMAGE_TOKENS
    base = p.image_base_tokens if p.image_base_tokens is not None else DEFAULT_IMAGE_TOKENS[0]
    tile = p.image_tile_tokens if p.image_tile_tokens is not None else DEFAULT_IMAGE_TOKENS[1]
    return base, tile


def image_tokens(model: str, width: int, height: int, detail: str) -> int:
    """Prompt tokens of one image part (OpenAI's tile formula).

    low: the base tokens. high/auto: base + tile tokens x the 512px tiles of the image after `image_size`.
    """
    base, tile = image_token_figures(model)
    if _check_detail(detail) == "low":
        return base
    w, h = image_size(width, height, detail)
    return base + tile * math.ceil(w / TILE) * math.ceil(h / TILE)
