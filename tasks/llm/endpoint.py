"""An endpoint: where a request is sent, how, at what rate, and what it costs there.

A run has one endpoint (its `base_url`, key and limiter) or several from an endpoints file
(`tasks/llm/pool.py` chooses one per attempt). The engine asks `endpoint_for(request)`.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import openai

from schemas.endpoints import EndpointSpec
from schemas.generation import GenerateConfig
from tasks.llm import client as llm_client
from tasks.llm import pricing, transport
from tasks.llm.ratelimit import RateLimiter
from tasks.llm.transport import ChatSender

DEFAULT_ENDPOINT = "default"  # `responses.endpoint` of a run without an endpoints file


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
    model: str | None = None  # sent instead of the request's model (e.g. an Azure deployment's name)
    price_model: str | None = None  # the prices.toml entry its calls are priced by; None: `model`, else the request's
    priority: int = 0  # routing: 0 first (tasks/llm/pool.py)
    key_env: str | None = None  # the environment variable its key came from (named in messages, never the key)

    @classmethod
    def open(cls, config: GenerateConfig, limiter: RateLimiter, name: str = DEFAULT_ENDPOINT) -> Endpoint:
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

    @classmethod
    def from_spec(cls, spec: EndpointSpec, key: str | None, config: GenerateConfig, limiter: RateLimiter) -> Endpoint:
        """An endpoint of an endpoints file, with its key (looked up by `tasks/llm/pool.py`) and its own limiter."""
        client = llm_client.make_client(base_url=spec.base_url, api_key=key, timeout=config.timeout)
        sender = transport.make_sender(client, config.transport, config.timeout)
        return cls(spec.name, spec.base_url, client, sender, limiter, key, secrets=(key,) if key else (),
                   model=spec.model, price_model=spec.price_model, priority=spec.priority, key_env=spec.api_key_env)

    def model_for(self, model: str) -> str:
        """The model name this endpoint is sent for a request of `model`."""
        return self.model or model

    def priced_as(self, model: str) -> str:
        """The price entry of a call here for a request of `model`."""
        return self.price_model or self.model_for(model)

    def cost_usd(self, model: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        """What an answer to a request of `model` with these token counts costs here (0 without a price)."""
        return pricing.cost_usd(self.priced_as(model), prompt_tokens, completion_tokens, cached_tokens,
                                batch=self.batch_prices)

    async def close(self) -> None:
        """Close the sender and the client."""
        await self.sender.close()
        await self.client.close()
