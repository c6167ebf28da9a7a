"""An endpoint: where a request is sent, how, at what rate, and what it costs there.

One default endpoint per run for now; the engine asks `endpoint_for(request)`, the seam where
a pool of endpoints (several providers or local servers for one model) will choose later.
"""

from __future__ import annotations

import base64
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
    secrets: tuple[str, ...] = ()  # what must never reach disk: the key, the URL's user:password

    @classmethod
    def open(cls, config: GenerateConfig, limiter: RateLimiter, name: str = "default") -> Endpoint:
        """The endpoint of `config` (`base_url`, key, timeout, transport) with `limiter`.

        Credentials that came in the URL (`http://user:pass@host/v1`, kept out of `base_url` by
        `GenerateConfig`) are sent as HTTP Basic auth; an endpoint takes one `Authorization` header, so
        they cannot go with an API key (ValueError, before anything is sent).
        """
        key = config.api_key.get_secret_value() if config.api_key else None
        headers = None
        if config.base_url_credentials is not None:
            if key:
                raise ValueError(
                    f"the base URL ({config.base_url}) carries a user:password and an API key is set too; an "
                    "endpoint takes one Authorization header: unset OPENAI_API_KEY or remove the credentials")
            basic = base64.b64encode(config.base_url_credentials.get_secret_value().encode()).decode()
            headers = {"Authorization": f"Basic {basic}"}
        client = llm_client.make_client(base_url=config.base_url, api_key=key, timeout=config.timeout,
                                        default_headers=headers)
        sender = transport.make_sender(client, config.transport, config.timeout)
        secrets: list[str | None] = [key]
        if config.base_url_credentials is not None:  # as given, as sent (Basic), and the password alone
            userinfo = config.base_url_credentials.get_secret_value()
            password = userinfo.partition(":")[2]
            secrets += [userinfo, basic, password if len(password) >= 4 else None]
        return cls(name, config.base_url, client, sender, limiter, key, secrets=tuple(s for s in secrets if s))

    def cost_usd(self, model: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        """What an answer with these token counts costs here (0 for a model without a price)."""
        return pricing.cost_usd(model, prompt_tokens, completion_tokens, cached_tokens, batch=self.batch_prices)

    async def close(self) -> None:
        """Close the sender and the client."""
        await self.sender.close()
        await self.client.close()
