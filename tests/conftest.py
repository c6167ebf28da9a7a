"""Shared fixtures. Area-specific fixtures live in their own test modules."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas import flow_params

REPO = Path(__file__).resolve().parents[1]
COCO_MINI = REPO.parent / "shared" / "coco-mini"
SAMPLE_COCO = Path(flow_params.SAMPLE_COCO)

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture
def db_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh database file, also exported as VISTUNE_DB for code that reads settings."""
    path = tmp_path / "vistune.duckdb"
    monkeypatch.setenv("VISTUNE_DB", str(path))
    return path


@pytest.fixture(scope="session")
def coco_mini() -> Path:
    """The real COCO 2017 subset beside the repo; skips (with the reason) in a clone without it."""
    if not (COCO_MINI / "annotations" / "captions_train2017.json").exists():
        pytest.skip(f"../shared/coco-mini not found at {COCO_MINI} (CI always has it)")
    return COCO_MINI


@pytest.fixture(scope="session")
def sample_coco() -> Path:
    """The tiny COCO-format sample the repo ships (synthetic images, hand-written annotations)."""
    return SAMPLE_COCO


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect server (~20 s to start) shared by every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="session")
def coco_images(request: pytest.FixtureRequest) -> Path:
    """Real COCO images for tests that only need some images with captions: coco-mini where it is
    beside the repo (CI), else the bundled sample, so a user's clone still runs these tests."""
    if (COCO_MINI / "annotations" / "captions_train2017.json").exists():
        return COCO_MINI
    return SAMPLE_COCO
