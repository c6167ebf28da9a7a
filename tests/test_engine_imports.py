"""The engine is domain-free: importing it loads nothing about sample types or prompts."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

_CHECK = """
import sys
import tasks.llm.engine, tasks.llm.client, tasks.llm.transport, tasks.llm.batch, tasks.llm.endpoint
domain = sorted(m for m in sys.modules if m == "schemas.samples" or m.startswith("tasks.prompting")
                or m.startswith("tasks.curation"))
print(",".join(domain))
"""


def test_engine_imports_no_sample_types() -> None:
    result = subprocess.run([sys.executable, "-c", _CHECK], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
