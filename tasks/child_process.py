"""Run a child process (training, inference) and stream its log lines; no Prefect, no torch here.

Heavy work runs out of process (DESIGN.md): the flow's process stays light, a crash or OOM in the child
cannot take the orchestrator down, and the same command line runs on a GPU box or under a launcher.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

TAIL_LINES = 40


def stream_process(
    cmd: Sequence[str],
    *,
    on_line: Callable[[str], None] = print,
    failure: Callable[[str], Exception],
    label: str = "",
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float | None = None,
) -> list[str]:
    """Run `cmd`, calling `on_line` per output line (stdout and stderr merged); returns the last lines.

    Raises `failure(message)` when it exits non-zero or runs past `timeout_s` (it is then killed); the
    message is `"{label}'{cmd}' {what}; its last lines:"` followed by them.
    """
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    # Unbuffered child output, so lines reach the log as they happen.
    child_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(list(cmd), cwd=cwd, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, errors="replace")
    # The watchdog kills the child; reading its output then ends and the timeout is reported.
    timed_out = threading.Event()

    def kill_on_timeout() -> None:
        timed_out.set()
        proc.kill()

    watchdog = threading.Timer(timeout_s, kill_on_timeout) if timeout_s else None
    if watchdog:
        watchdog.start()
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n").rsplit("\r", 1)[-1]  # tqdm redraws with \r: keep only the latest state
            if line.strip():
                tail.append(line)
                on_line(line)
        returncode = proc.wait()
    except BaseException:
        proc.kill()  # an interrupted flow must not leave the child behind
        proc.wait()
        raise
    finally:
        if watchdog:
            watchdog.cancel()
    if timed_out.is_set() or returncode != 0:
        what = f"ran past {timeout_s} s and was killed" if timed_out.is_set() else f"exited with code {returncode}"
        last = "\n".join(tail) or "(no output)"
        raise failure(f"{label}{' '.join(cmd)!r} {what}; its last lines:\n{last}")
    return list(tail)
