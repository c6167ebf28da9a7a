"""Settings read from the environment, `.env` or `vistune.toml` (flags override them in the CLI)."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource


class Settings(BaseSettings):
    """Everything a run needs from its surroundings. Secrets are `SecretStr` so they never print."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", toml_file="vistune.toml")

    openai_api_key: SecretStr | None = Field(default=None, validation_alias="OPENAI_API_KEY")
    openai_base_url: str | None = Field(default=None, validation_alias="OPENAI_BASE_URL")
    db_path: Path = Field(
        default=Path("data/vistune.duckdb"), validation_alias=AliasChoices("VISTUNE_DB", "db_path")
    )
    model: str = Field(default="gpt-4o", validation_alias=AliasChoices("VISTUNE_MODEL", "model"))
    # A rejected answer is asked for again (with another seed) at most this many times.
    max_regenerations: int = Field(
        default=2, ge=0, validation_alias=AliasChoices("VISTUNE_MAX_REGENERATIONS", "max_regenerations")
    )
    # Ingest skips a COCO caption longer than this (after whitespace is collapsed) as `caption_too_long`:
    # real COCO captions stay under a few hundred characters; a 50 KB one would make a 12K-token prompt.
    max_caption_chars: int = Field(
        default=1000, ge=1, validation_alias=AliasChoices("VISTUNE_MAX_CAPTION_CHARS", "max_caption_chars")
    )
    prefect_secret_block: str = Field(
        default="openai-api-key",
        validation_alias=AliasChoices("VISTUNE_SECRET_BLOCK", "prefect_secret_block"),
    )
    # Prefect work pools by role (prefect.yaml reads them as {{ $VISTUNE_CPU_POOL }} / {{ $VISTUNE_GPU_POOL }};
    # `python -m flows.pools deploy` exports them from here): CPU work (ingest, generate, curate, judging) on one,
    # GPU work (training, inference) on the other, each served by the workers of its own machine(s).
    cpu_pool: str = Field(default="vistune", validation_alias=AliasChoices("VISTUNE_CPU_POOL", "cpu_pool"))
    gpu_pool: str = Field(default="vistune-gpu", validation_alias=AliasChoices("VISTUNE_GPU_POOL", "gpu_pool"))
    # A flow meant for a GPU (train) fails at once when torch sees none, unless its `allow_cpu` parameter is set.
    # The `train` deployment sets it in its job environment; off, training keeps running wherever it runs.
    require_gpu: bool = Field(default=False, validation_alias=AliasChoices("VISTUNE_REQUIRE_GPU", "require_gpu"))
    # DuckDB's memory for each database file the process opens (its block cache, joins, sorts; beyond it they spill
    # to `<database>.tmp`). DuckDB's own default is 80% of the machine, so a long run's RSS grew with its tables
    # (validating 1.58M responses: 2.7 GiB; 0.9 GiB with 512MB, as fast). DuckDB fills what it is given, e.g. in
    # each checkpoint of a large table, so this cap is what a 10x LLaVA run holds beyond a 1x one (256MB: the
    # planning spike of 1.58M requests +0.39 GiB, +0.25 GiB at 158K). A DuckDB size: "256MB", "2GB", "4GiB".
    duckdb_memory_limit: str = Field(
        default="256MB", validation_alias=AliasChoices("VISTUNE_DUCKDB_MEMORY_LIMIT", "duckdb_memory_limit"))

    @field_validator("duckdb_memory_limit")
    @classmethod
    def _duckdb_size(cls, value: str) -> str:
        if not re.fullmatch(r"\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)", value.strip(), flags=re.IGNORECASE):
            raise ValueError(f"VISTUNE_DUCKDB_MEMORY_LIMIT={value!r} is not a DuckDB size: use e.g. 1GB, 512MB or 4GiB")
        return value.strip()

    @field_validator("openai_api_key", "openai_base_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # `export OPENAI_API_KEY=` means "not set", not "an empty key for api.openai.com".
        if isinstance(value, str | SecretStr):
            text = value.get_secret_value() if isinstance(value, SecretStr) else value
            return text.strip() or None
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # flags > env > .env > vistune.toml
        return (init_settings, env_settings, dotenv_settings, TomlConfigSettingsSource(settings_cls))


def get_settings(**overrides: object) -> Settings:
    """Settings with explicit overrides (e.g. CLI flags) on top; `None` overrides are ignored."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
