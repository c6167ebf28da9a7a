"""The batching event loop: idle waits end on window boundaries, ready work is never delayed.

The assertions count wake-ups and window changes, not wall-clock time, so a loaded machine cannot fail them.
"""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from tasks.llm import wakeups


def test_window_follows_the_rate_limit() -> None:
    assert wakeups.window_for_rate(None) == 0.0  # no known limit: no batching
    assert wakeups.window_for_rate(1200) == pytest.approx(0.5)  # 20 req/s: 10 requests' worth
    assert wakeups.window_for_rate(6000) == pytest.approx(0.1)
    assert wakeups.window_for_rate(60) == wakeups.MAX_WINDOW_S  # capped
    # the concurrency bounds it: 16 slots at 10 req/s keep 0.4 s (4 requests) for batching
    assert wakeups.window_for_rate(600, concurrency=16) == pytest.approx(0.4)
    assert wakeups.window_for_rate(600, concurrency=64) == wakeups.MAX_WINDOW_S
    assert wakeups.window_for_rate(None, concurrency=64) == 0.0


async def _at_a_boundary() -> wakeups.BatchingSelector:
    # One batched wait ends on a window boundary: what the caller schedules next starts a fresh window.
    selector = wakeups.selector_for()
    assert selector is not None
    await asyncio.sleep(0.001)
    return selector


def test_timers_due_within_one_window_fire_in_one_wakeup() -> None:
    fired: list[int] = []

    async def main() -> int:
        loop = asyncio.get_running_loop()
        selector = await _at_a_boundary()
        before = selector.batched_waits
        done = asyncio.Event()
        for n, delay in enumerate((0.01, 0.06, 0.12)):  # all due well inside the 1 s window
            loop.call_later(delay, fired.append, n)
        loop.call_later(0.13, done.set)
        await done.wait()
        return selector.batched_waits - before

    waits = wakeups.run(main(), window_s=1.0)
    assert fired == [0, 1, 2]
    assert waits == 1  # four timers, one wake-up


def test_ready_work_is_not_delayed() -> None:
    async def main() -> int:
        selector = await _at_a_boundary()
        before = selector.batched_waits
        for _ in range(200):
            await asyncio.sleep(0)  # each hop is a zero-timeout select
        return selector.batched_waits - before

    assert wakeups.run(main(), window_s=0.25) == 0  # no hop waited for a boundary


def test_socket_data_waits_for_the_next_boundary_in_one_wakeup() -> None:
    left, right = socket.socketpair()

    async def main() -> tuple[bytes, int]:
        reader, _ = await asyncio.open_connection(sock=left)
        selector = await _at_a_boundary()
        before = selector.batched_waits
        sender = threading.Timer(0.03, right.sendall, args=(b"ping",))
        sender.start()
        data = await asyncio.wait_for(reader.read(4), timeout=5)
        sender.join()
        return data, selector.batched_waits - before

    try:
        data, waits = wakeups.run(main(), window_s=1.0)
    finally:
        right.close()
    assert data == b"ping"
    assert waits == 1  # delivered by the wake-up at the window's end, not by one of its own


def test_set_window_only_touches_batching_loops() -> None:
    async def plain() -> bool:
        return wakeups.set_window(0.1)

    assert asyncio.run(plain()) is False

    async def batching() -> float:
        assert wakeups.set_window(0.05) is True
        selector = wakeups.selector_for()
        assert selector is not None
        return selector.window_s

    assert wakeups.run(batching()) == 0.05


@pytest.mark.parametrize(("window_ms", "expected"), [(None, [0.3, 0.0]), (40, [0.04, 0.0]), (0, [0.0])])
def test_generation_runs_on_a_batching_loop_sized_by_the_rate(
    db_path, monkeypatch: pytest.MonkeyPatch, window_ms: float | None, expected: list[float]
) -> None:
    from bench.gen_scale import synthetic_images
    from schemas.generation import GenerateConfig
    from tasks.llm.engine import run_requests_sync
    from tasks.prompting.plan import plan_requests
    from tests.sim import SimConfig, start_simulator

    windows: list[float] = []
    real_set_window = wakeups.set_window

    def spy(window_s: float, loop=None) -> bool:
        windows.append(window_s)
        assert real_set_window(window_s, loop) is True  # the engine's loop is a batching one
        return True

    monkeypatch.setattr(wakeups, "set_window", spy)
    synthetic_images(db_path, 12)
    plan = plan_requests(db_path, sample_types=["complex_reasoning"], model="gpt-4o-mini")
    with start_simulator(SimConfig(seed=2)) as sim:
        config = GenerateConfig(base_url=sim.base_url, api_key="sk-test-wakeups-0123456789", model="gpt-4o-mini",
                                concurrency=24, rpm=1200, flush_interval_s=0.2, wakeup_window_ms=window_ms)
        stats = run_requests_sync(plan.request_ids, db_path=db_path, config=config)
    assert (stats.done, stats.failed) == (12, 0)
    # Default: a quarter of 24 slots at 20/s. Set once while sending (the rate did not change),
    # then off, so the last flush and the closes are not held to window boundaries.
    assert windows == [pytest.approx(w) for w in expected]
