"""The endpoints file: several OpenAI-compatible endpoints one run sends to together (`vistune generate --endpoints`).

A TOML file with one table per endpoint, named by its table key:

    [endpoints.openai-org-a]
    base_url = "https://api.openai.com/v1"
    api_key_env = "OPENAI_KEY_ORG_A"     # the NAME of the environment variable holding the key, never the key
    model = "gpt-4o"
    rpm = 10000
    tpm = 2000000

    [endpoints.azure-eu]
    base_url = "https://my-eu.openai.azure.com/openai/v1"
    api_key_env = "AZURE_EU_KEY"
    model = "gpt4o-eu"                   # the deployment's name, sent as `model`
    price_model = "gpt-4o"               # priced as this entry of tasks/llm/prices.toml
    rpm = 3000
    priority = 1                         # used only for what the preferred endpoints cannot take

Only shapes here (no I/O): `tasks/llm/pool.py` reads the file, looks the keys up and opens the endpoints.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

# What a name may hold: it is stored in `responses.endpoint` and used as a rate-limit bucket name.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
ENV_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


class EndpointSpec(BaseModel):
    """One endpoint as the file describes it (the key stays in the environment)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="the table key; recorded on every response it serves")
    base_url: str | None = Field(default=None, description="OpenAI-compatible base URL; empty = api.openai.com")
    api_key_env: str | None = Field(
        default=None, pattern=ENV_PATTERN,
        description="name of the environment variable holding the key; empty = no key (local servers)",
    )
    model: str | None = Field(default=None, description="model name sent to this endpoint; empty = the run's model")
    price_model: str | None = Field(
        default=None, description="price entry of tasks/llm/prices.toml for this endpoint's calls; empty = model"
    )
    # Routing by headroom needs each endpoint's rate: for a server without a published limit, the rate it sustains.
    rpm: float = Field(gt=0, description="requests per minute this endpoint allows")
    tpm: float | None = Field(default=None, gt=0, description="tokens per minute; empty = no token limit")
    priority: int = Field(
        default=0, ge=0, description="0 first; a higher number gets only what the lower ones have no room for"
    )

    @field_validator("base_url")
    @classmethod
    def _plain_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url {value!r} is not an http(s) URL")
        if "@" in parts.netloc:  # the file is configuration, often committed: secrets go in environment variables
            raise ValueError("base_url holds credentials (user:password@): put the key in the variable that "
                             "api_key_env names")
        return value


class EndpointsFile(BaseModel):
    """The whole file: at least one endpoint, names unique (TOML table keys)."""

    model_config = ConfigDict(extra="forbid")

    endpoints: dict[str, EndpointSpec] = Field(min_length=1)
