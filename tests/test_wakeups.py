"""The batching event loop: idle waits end on window boundaries, ready work is never delayed."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

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


def test_timers_due_within_one_window_fire_in_one_wakeup() -> None:
    window = 0.2
    fired: list[float] = []

    async def main() -> int:
        loop = asyncio.get_running_loop()
        selector = loop._selector  # type: ignore[attr-defined]
        blocking = 0
        original = selector.select

        def counting(timeout=None):
            nonlocal blocking
            if timeout is None or timeout > 0:
                blocking += 1
            return original(timeout)

        selector.select = counting
        await asyncio.sleep(window - time.monotonic() % window + 0.005)  # start just after a boundary
        done = asyncio.Event()
        for delay in (0.01, 0.06, 0.12):
            loop.call_later(delay, fired.append, time.monotonic())
        loop.call_later(0.13, done.set)
        blocking = 0
        await done.wait()
        return blocking

    blocking = wakeups.run(main(), window_s=window)
    assert len(fired) == 3
    assert max(fired) - min(fired) < 0.02  # all three ran together, at the boundary
    assert blocking == 1
    assert min(fired) % window < 0.03 or window - min(fired) % window < 0.01  # on a window boundary


def test_ready_work_is_not_delayed() -> None:
    async def main() -> float:
        start = time.monotonic()
        for _ in range(200):
            await asyncio.sleep(0)  # each hop is a zero-timeout select
        return time.monotonic() - start

    assert wakeups.run(main(), window_s=0.25) < 0.2


def test_socket_data_is_delivered_at_the_next_boundary() -> None:
    window = 0.1
    left, right = socket.socketpair()

    async def main() -> tuple[bytes, float]:
        loop = asyncio.get_running_loop()
        reader, _ = await asyncio.open_connection(sock=left)
        sent_at: list[float] = []

        def send() -> None:
            time.sleep(0.03)
            sent_at.append(time.monotonic())
            right.sendall(b"ping")

        threading.Thread(target=send).start()
        data = await asyncio.wait_for(reader.read(4), timeout=2)
        received = loop.time()
        return data, received - sent_at[0]

    try:
        data, lag = wakeups.run(main(), window_s=window)
    finally:
        right.close()
    assert data == b"ping"
    assert lag <= window + 0.05  # late by at most a window (and scheduling noise)


def test_set_window_only_touches_batching_loops() -> None:
    async def plain() -> bool:
        return wakeups.set_window(0.1)

    assert asyncio.run(plain()) is False

    async def batching() -> float:
        assert wakeups.set_window(0.05) is True
        return asyncio.get_running_loop()._selector.window_s  # type: ignore[attr-defined]

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
        start = time.monotonic()
        stats = run_requests_sync(plan.request_ids, db_path=db_path, config=config)
        elapsed = time.monotonic() - start
    assert (stats.done, stats.failed) == (12, 0)
    # Default: a quarter of 24 slots at 20/s. Set once while sending (the rate did not change),
    # then off, so the last flush and the closes are not held to window boundaries.
    assert windows == [pytest.approx(w) for w in expected]
    assert elapsed < 3.0  # 12 requests at 20/s with a 1 s burst: the batching does not slow the pace
