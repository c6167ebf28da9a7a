"""`vistune simulator`: serve the OpenAI-compatible simulator, a local endpoint for the flows and workers.

The simulator lives in `tests/sim` and ships with the package (`tests*` is in the wheel's packages),
so `vistune simulator` serves the same app as `python -m tests.sim`: no API key, no cost, fake answers.
"""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli import app


@app.command(
    "simulator",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def simulator_command(
    ctx: typer.Context,
    port: Annotated[int, typer.Option("--port", metavar="PORT", help="port to listen on; 0 picks a free one")] = 8000,
    host: Annotated[str, typer.Option("--host", metavar="HOST", help="address to listen on")] = "127.0.0.1",
) -> None:
    """Serve the OpenAI-compatible simulator at http://HOST:PORT/v1 until interrupted.

    Point a worker or `vistune run` at it with OPENAI_BASE_URL=http://HOST:PORT/v1 (no key needed).
    Further flags go to the simulator (`python -m tests.sim --help` lists them), e.g. --latency-ms 200.
    """
    from tests.sim.__main__ import main as serve  # imported here: uvicorn only when serving

    serve(["--host", host, "--port", str(port), *ctx.args])
