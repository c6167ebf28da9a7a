"""An endpoint: where a request is sent, how, at what rate, and what it costs there.

One default endpoint per run for now; the engine asks `endpoint_for(request)`, the seam where
a pool of endpoints (several providers or local servers for one model) will choose later.
"""

from __future__ import annotations

from dataclasses import dataclass

import openai

from schemas.generation import GenerateConfig
from tasks.llm import client as llm_client
from tasks.llm import pricing, transport
from tasks.llm.ratelimit import RateLimiter
from tasks.llm.transport import ChatSender


@dataclass
class Endpoint:
    """An OpenAI-compatible server with its client, sender, rate limiter and prices."""

    name: str
    base_url: str | None
    client: openai.AsyncOpenAI
    sender: ChatSender
    limiter: RateLimiter
    api_key: str | None = None
    batch_prices: bool = False  # True: the Batch API's discounted prices

    @classmethod
    def open(cls, config: GenerateConfig, limiter: RateLimiter, name: str = "default") -> Endpoint:
        """The endpoint of `config` (`base_url`, key, timeout, transport) with `limiter`."""
        key = config.api_key.get_secret_value() if config.api_key else None
        client = llm_client.make_client(base_url=config.base_url, api_key=key, timeout=config.timeout)
        sender = transport.make_sender(client, config.transport, config.timeout)
        return cls(name, config.base_url, client, sender, limiter, key)

    def cost_usd(self, model: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        """What an answer with these token counts costs here (0 for a model without a price)."""
        return pricing.cost_usd(model, prompt_tokens, completion_tokens, cached_tokens, batch=self.batch_prices)

    async def close(self) -> None:
        """Close the sender and the client."""
        await self.sender.close()
        await self.client.close()
