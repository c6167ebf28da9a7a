"""The LLaVA training record that `tasks/curation/export.py` writes and `training/data.py` reads.

One record per sample: `{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}, ...]}`.
Turns alternate human/gpt starting with human, and the `<image>` placeholder appears exactly once,
in the first human turn. `image` is relative to the image root given at export (and to training's
`image_root`). Constructing a `LlavaRecord` enforces all of this, so a reader can validate exports.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

IMAGE_PLACEHOLDER = "<image>"


class LlavaTurn(BaseModel):
    """One message; `from` is a Python keyword, so the field is `speaker` with alias `from`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)
    speaker: Literal["human", "gpt"] = Field(alias="from")
    value: str = Field(min_length=1)


class LlavaRecord(BaseModel):
    """A LLaVA-format record with the invariants trainers rely on checked at construction."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(min_length=1)
    image: str = Field(min_length=1)
    conversations: list[LlavaTurn] = Field(min_length=2)

    @model_validator(mode="after")
    def _check_turns(self) -> LlavaRecord:
        for index, turn in enumerate(self.conversations):
            expected = "human" if index % 2 == 0 else "gpt"
            if turn.speaker != expected:
                raise ValueError(f"record {self.id}: turn {index} is from {turn.speaker!r}, expected {expected!r}")
        if len(self.conversations) % 2:
            raise ValueError(f"record {self.id}: ends with a human turn; every question needs a gpt answer")
        counts = [turn.value.count(IMAGE_PLACEHOLDER) for turn in self.conversations]
        if counts[0] != 1 or sum(counts) != 1:
            raise ValueError(
                f"record {self.id}: {IMAGE_PLACEHOLDER} must appear exactly once, in the first human turn "
                f"(found {counts[0]} there, {sum(counts)} in total)"
            )
        return self

    def to_json(self) -> dict:
        """The record as LLaVA's json expects it (`from`, not `speaker`)."""
        return self.model_dump(by_alias=True)
