"""Seeded dice: which fault (if any) a request gets, and how long it takes.

A roll depends only on (seed, request body, attempt number for that body), never on arrival order,
so a run is repeatable under concurrency, and a retry of the same body gets a fresh roll.
"""

from __future__ import annotations

import hashlib
import math
from statistics import NormalDist

from tests.sim.config import FAULT_FIELDS, SimConfig

FAULT_NAMES = tuple(name.removeprefix("fault_") for name in FAULT_FIELDS)  # "429", "5xx", "hang", ...


def roll(seed: int, body_key: int, attempt: int, salt: str) -> float:
    """A uniform number in [0, 1) fixed by its inputs."""
    digest = hashlib.blake2b(f"{seed}:{body_key}:{attempt}:{salt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class Dice:
    """Fault and latency choices for one simulator configuration."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self._cumulative: list[tuple[float, str]] = []
        total = 0.0
        for field, name in zip(FAULT_FIELDS, FAULT_NAMES, strict=True):
            rate = getattr(config, field)
            if rate > 0:
                total += rate
                self._cumulative.append((total, name))

    def fault(self, body_key: int, attempt: int) -> str | None:
        """The fault this attempt suffers: a name from FAULT_NAMES (5xx resolved to 500/503), or None."""
        if not self._cumulative:
            return None
        u = roll(self.config.seed, body_key, attempt, "fault")
        for bound, name in self._cumulative:
            if u < bound:
                if name == "5xx":
                    return "500" if roll(self.config.seed, body_key, attempt, "5xx") < 0.5 else "503"
                return name
        return None

    def latency_s(self, body_key: int, attempt: int) -> float:
        """Seconds this attempt takes before answering."""
        mean = self.config.latency_ms / 1000
        if mean <= 0:
            return 0.0
        if self.config.latency == "fixed":
            return mean
        u = roll(self.config.seed, body_key, attempt, "latency")
        spread = self.config.latency_spread
        if self.config.latency == "uniform":
            return max(0.0, mean * (1 + spread * (2 * u - 1)))
        # lognormal with the requested mean: mu = ln(mean) - sigma^2 / 2
        z = NormalDist().inv_cdf(min(max(u, 1e-12), 1 - 1e-12))
        return math.exp(math.log(mean) - spread**2 / 2 + spread * z)
