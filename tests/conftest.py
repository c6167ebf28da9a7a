"""Shared fixtures. Area-specific fixtures live in their own test modules."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

# The suite's own Prefect home, set before anything imports prefect (it reads PREFECT_HOME once, at import):
# nothing lands in the user's ~/.prefect (profiles, memo store, local storage). Subprocesses inherit it.
_PREFECT_HOME = tempfile.mkdtemp(prefix="vistune-tests-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import pytest  # noqa: E402  (after PREFECT_HOME: a plugin may import prefect)

from schemas import flow_params  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COCO_MINI_ENV = "VISTUNE_COCO_MINI"
# VISTUNE_COCO_MINI=DIR points the coco-mini tests at a copy elsewhere; default: ../shared/coco-mini.
COCO_MINI = Path(os.environ.get(COCO_MINI_ENV) or REPO.parent / "shared" / "coco-mini").expanduser()
SAMPLE_COCO = Path(flow_params.SAMPLE_COCO)


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
        pytest.skip(f"coco-mini not found at {COCO_MINI}: set {COCO_MINI_ENV}=DIR (a COCO folder with "
                    "annotations/captions_train2017.json) to run these tests (CI always has it)")
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
