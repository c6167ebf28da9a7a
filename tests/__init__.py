"""Tests; `tests.sim` is the OpenAI-compatible simulator (run it with `python -m tests.sim`)."""
