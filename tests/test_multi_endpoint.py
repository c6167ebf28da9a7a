"""Several endpoints at once (`--endpoints FILE`): routing by headroom, breakers per endpoint, the endpoint column."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from typer.testing import CliRunner

from bench.gen_scale import synthetic_images
from flows.cli import get_app
from schemas.generation import GenerateConfig
from tasks import store
from tasks.llm import parsers, pricing
from tasks.llm.engine import AuthenticationFailed, EndpointUnreachable, run_requests_sync
from tasks.llm.pool import EndpointsFileError, load_endpoints
from tasks.llm.shared_limiter import SharedRateLimiter
from tests.chat_server import ChatServer
from tests.fakes import plant_requests
from tests.sim import SimConfig, start_simulator

REPO = Path(__file__).resolve().parents[1]
KIND = "test/multi-endpoint"
GOOD_KEY = "sk-multi-endpoint-GOOD-0123456789abcdef"
BAD_KEY = "sk-multi-endpoint-BAD-0123456789abcdef"


@pytest.fixture(autouse=True)
def _any_answer_parses() -> None:
    parsers.register(KIND, lambda content: content)


def write_endpoints(path: Path, endpoints: dict[str, dict[str, Any]]) -> Path:
    """An endpoints file (TOML); JSON's string and number literals are TOML's too."""
    lines = []
    for name, fields in endpoints.items():
        lines.append(f"[endpoints.{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in fields.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def served_ok(*sims: Any) -> Counter[str]:
    """Request id -> how many times the simulators answered it with a 200, all of them together."""
    return Counter(r.client_request_id for sim in sims for r in list(sim.log)
                   if r.path.endswith("/chat/completions") and r.status == 200)


class KeyServer(ChatServer):
    """An OpenAI-shaped endpoint that answers only `key` (401 quoting the key otherwise, as OpenAI does)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.seen: list[tuple[str, str]] = []  # (key sent, model sent)
        super().__init__()

    async def _chat(self, request: web.Request) -> web.Response:
        sent = request.headers.get("Authorization", "").removeprefix("Bearer ")
        body = await request.json()
        self.seen.append((sent, body["model"]))
        if sent != self.key:
            error = {"message": f"Incorrect API key provided: {sent}", "type": "invalid_request_error"}
            return web.json_response({"error": error}, status=401)
        return web.json_response({"choices": [{"message": {"content": "fine"}, "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 1000, "completion_tokens": 100}})


@pytest.fixture
def three_sims() -> Iterator[list[Any]]:
    sims = [start_simulator(SimConfig(rpm=rpm)) for rpm in (300, 600, 900)]
    try:
        yield sims
    finally:
        for sim in sims:
            sim.stop()


def _config(endpoints: Path, **overrides: Any) -> GenerateConfig:
    values: dict[str, Any] = {"endpoints_file": str(endpoints), "model": "gpt-4o-mini", "concurrency": 32,
                              "timeout": 5.0, "backoff_base_s": 0.05, "backoff_max_s": 0.1}
    return GenerateConfig(**{**values, **overrides})


def test_requests_go_where_the_headroom_is_in_proportion_to_the_limits(
    db_path: Path, tmp_path: Path, three_sims: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VISTUNE_TEST_KEY_B", GOOD_KEY)
    small, medium, large = three_sims
    endpoints = write_endpoints(tmp_path / "endpoints.toml", {
        "small": {"base_url": small.base_url, "rpm": 300},
        "medium": {"base_url": medium.base_url, "rpm": 600, "model": "gpt-4o", "api_key_env": "VISTUNE_TEST_KEY_B"},
        "large": {"base_url": large.base_url, "rpm": 900, "model": "eu-deployment-7", "price_model": "gpt-4.1"},
    })
    ids = plant_requests(db_path, 270, KIND, model="gpt-4o-mini")  # 9 s at the three limits together

    stats = run_requests_sync(ids, db_path=db_path, config=_config(endpoints))

    assert stats.done == 270
    served = {name: len(sim.log) for name, sim in zip(("small", "medium", "large"), three_sims, strict=True)}
    for name, share in (("small", 1 / 6), ("medium", 2 / 6), ("large", 3 / 6)):  # each at its own limit
        assert abs(served[name] / 270 - share) < 0.05, served
    assert all(sim.stats.get("status_429", 0) == 0 for sim in three_sims)  # no endpoint was pushed past its limit
    assert max(served_ok(*three_sims).values()) == 1  # every request answered once, by one endpoint
    rows = store.query("SELECT endpoint, status, prompt_tokens, completion_tokens, cached_tokens, cost_usd "
                       "FROM responses", path=db_path)
    assert Counter(r["endpoint"] for r in rows) == served  # the column says who served each answer
    priced_as = {"small": "gpt-4o-mini", "medium": "gpt-4o", "large": "gpt-4.1"}
    for r in rows:  # each answer priced by its endpoint's model
        expected = pricing.cost_usd(priced_as[r["endpoint"]], r["prompt_tokens"], r["completion_tokens"],
                                    r["cached_tokens"])
        assert r["cost_usd"] == pytest.approx(expected)
    assert stats.by_endpoint["large"].ok == served["large"]
    assert stats.by_endpoint["medium"].cost_usd == pytest.approx(sum(r["cost_usd"] for r in rows
                                                                     if r["endpoint"] == "medium"))
    run = store.query("SELECT params, stats FROM runs", path=db_path)[0]
    assert GOOD_KEY not in run["params"]  # the variable's name is recorded, never its value
    assert {e["name"]: e.get("api_key_env") for e in json.loads(run["params"])["endpoints"]}["medium"] == \
        "VISTUNE_TEST_KEY_B"
    assert json.loads(run["stats"])["by_endpoint"]["small"]["ok"] == served["small"]


def test_a_lower_priority_endpoint_gets_only_what_the_first_cannot_take(db_path: Path, tmp_path: Path) -> None:
    with start_simulator(SimConfig()) as first, start_simulator(SimConfig()) as spill:
        endpoints = write_endpoints(tmp_path / "endpoints.toml", {
            "spill": {"base_url": spill.base_url, "rpm": 6000, "priority": 1},
            "first": {"base_url": first.base_url, "rpm": 6000},
        })
        ids = plant_requests(db_path, 20, KIND)
        run_requests_sync(ids, db_path=db_path, config=_config(endpoints, concurrency=1))  # far below the limit
        assert (len(first.log), len(spill.log)) == (20, 0)


def test_a_dead_endpoint_is_cut_out_and_its_requests_move_to_the_others(
    db_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with start_simulator(SimConfig(rpm=1200)) as one, start_simulator(SimConfig(rpm=1200)) as two:
        endpoints = write_endpoints(tmp_path / "endpoints.toml", {
            "dead": {"base_url": f"http://127.0.0.1:{closed_port()}/v1", "rpm": 6000},  # the most headroom
            "one": {"base_url": one.base_url, "rpm": 1200},
            "two": {"base_url": two.base_url, "rpm": 1200},
        })
        ids = plant_requests(db_path, 120, KIND)
        with caplog.at_level(logging.WARNING, logger="vistune.engine"):
            stats = run_requests_sync(ids, db_path=db_path, config=_config(endpoints, breaker_consecutive_failures=5))
        assert stats.done == 120 and stats.failed == 0
        assert max(served_ok(one, two).values()) == 1
    assert "5 attempts in a row could not reach" in (stats.by_endpoint["dead"].cut_out or "")
    assert "endpoint 'dead'" in caplog.text and "cut out" in caplog.text
    dead_rows = store.query("SELECT status, count(*) AS n FROM responses WHERE endpoint = 'dead' GROUP BY 1",
                            path=db_path)
    assert [r["status"] for r in dead_rows] == ["connection_error"]
    assert 5 <= dead_rows[0]["n"] < 5 + 32  # the run of 5, plus attempts already past its limiter
    assert store.query("SELECT status FROM runs", path=db_path)[0]["status"] == "completed"


def test_a_rejected_key_cuts_out_only_its_endpoint(
    db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("VISTUNE_TEST_GOOD", GOOD_KEY)
    monkeypatch.setenv("VISTUNE_TEST_BAD", BAD_KEY)
    with KeyServer(GOOD_KEY) as server:
        endpoints = write_endpoints(tmp_path / "endpoints.toml", {
            "revoked": {"base_url": server.base_url, "api_key_env": "VISTUNE_TEST_BAD", "rpm": 6000},
            "good": {"base_url": server.base_url, "api_key_env": "VISTUNE_TEST_GOOD", "rpm": 600,
                     "model": "deploy-x", "price_model": "gpt-4o"},
        })
        ids = plant_requests(db_path, 30, KIND)
        with caplog.at_level(logging.WARNING, logger="vistune.engine"):
            stats = run_requests_sync(ids, db_path=db_path, config=_config(endpoints, concurrency=4))
    assert stats.done == 30
    assert "refused the key" in caplog.text and "VISTUNE_TEST_BAD" in caplog.text and "'revoked'" in caplog.text
    assert "VISTUNE_TEST_BAD" in (stats.by_endpoint["revoked"].cut_out or "")
    assert sum(1 for key, _ in server.seen if key == BAD_KEY) <= 4  # at most the calls already on their way
    assert {model for key, model in server.seen if key == GOOD_KEY} == {"deploy-x"}  # its own model name is sent
    ok = store.query("SELECT endpoint, cost_usd FROM responses WHERE status = 'ok'", path=db_path)
    assert {r["endpoint"] for r in ok} == {"good"}
    assert ok[0]["cost_usd"] == pytest.approx(pricing.cost_usd("gpt-4o", 1000, 100))
    everything = "".join(json.dumps(r, default=str) for r in store.query("SELECT * FROM responses", path=db_path))
    assert BAD_KEY not in everything and GOOD_KEY not in everything


def test_the_run_stops_once_every_endpoint_is_out(db_path: Path, tmp_path: Path, monkeypatch) -> None:
    endpoints = write_endpoints(tmp_path / "endpoints.toml", {
        "a": {"base_url": f"http://127.0.0.1:{closed_port()}/v1", "rpm": 6000},
        "b": {"base_url": f"http://127.0.0.1:{closed_port()}/v1", "rpm": 6000},
    })
    ids = plant_requests(db_path, 60, KIND)
    with pytest.raises(EndpointUnreachable, match="every endpoint is out of the run") as stopped:
        run_requests_sync(ids, db_path=db_path, config=_config(endpoints, concurrency=4,
                                                               breaker_consecutive_failures=5))
    assert "a: 5 attempts in a row" in str(stopped.value) and "b: 5 attempts in a row" in str(stopped.value)
    assert store.query("SELECT status FROM runs", path=db_path)[0]["status"] == "failed"
    assert store.query("SELECT count(*) AS n FROM claims", path=db_path)[0]["n"] == 0

    monkeypatch.setenv("VISTUNE_TEST_BAD", BAD_KEY)  # every key refused: the run stops at once, as with one key
    with KeyServer(GOOD_KEY) as server:
        write_endpoints(endpoints, {"only": {"base_url": server.base_url, "api_key_env": "VISTUNE_TEST_BAD",
                                             "rpm": 600}})
        with pytest.raises(AuthenticationFailed, match=r"every endpoint is out.*refused the key"):
            run_requests_sync(ids, db_path=db_path, config=_config(endpoints, concurrency=2))
        assert len(server.seen) <= 2


def test_a_bad_endpoints_file_names_every_problem_once(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.toml"
    path.write_text(
        'workers = 3\n'
        '[endpoints.no-rate]\nbase_url = "http://127.0.0.1:1/v1"\n'
        '[endpoints.negative]\nbase_url = "http://127.0.0.1:2/v1"\nrpm = -5\n'
        '[endpoints.typo]\nbase_url = "http://127.0.0.1:3/v1"\nrpm = 60\nrmp = 60\n'
        '[endpoints.not-a-url]\nbase_url = "localhost:8000"\nrpm = 60\n'
        '[endpoints.keyless]\nbase_url = "http://127.0.0.1:4/v1"\nrpm = 60\napi_key_env = "VISTUNE_TEST_UNSET_VAR"\n'
        '[endpoints.twin-a]\nbase_url = "http://127.0.0.1:5/v1"\nrpm = 60\n'
        '[endpoints.twin-b]\nbase_url = "http://127.0.0.1:5/v1"\nrpm = 60\n'
    )
    with pytest.raises(EndpointsFileError) as bad:
        load_endpoints(path, environ={})
    problems = bad.value.problems
    assert len(problems) == 7, problems
    expected = ["'workers'", "endpoint 'no-rate': rpm: Field required", "endpoint 'negative': rpm:",
                "endpoint 'typo': rmp: Extra inputs", "endpoint 'not-a-url': base_url:",
                "endpoint 'keyless': environment variable VISTUNE_TEST_UNSET_VAR (its API key) is not set",
                "endpoints 'twin-a' and 'twin-b'"]
    for text, problem in zip(expected, problems, strict=True):
        assert text in problem and "\n" not in problem
    assert str(bad.value).count("\n- ") == 7

    for content, message in (("[endpoints\n", "not valid TOML"), ("", "no endpoints"),
                             ('[endpoints]\nx = 1\n', "endpoint 'x': must be a table")):
        path.write_text(content)
        with pytest.raises(EndpointsFileError, match=message):
            load_endpoints(path)
    with pytest.raises(EndpointsFileError, match="file not found"):
        load_endpoints(tmp_path / "missing.toml")


def test_an_endpoints_file_replaces_the_single_endpoint_settings_and_takes_no_batch(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="drop base_url, rpm"):
        GenerateConfig(endpoints_file="e.toml", base_url="http://127.0.0.1:1/v1", rpm=60)
    with pytest.raises(ValueError, match="batch mode sends to one endpoint"):
        GenerateConfig(endpoints_file="e.toml", mode="batch")


def test_vistune_generate_with_endpoints_prints_what_each_did(
    db_path: Path, tmp_path: Path, sample_coco: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.ingest.coco import ingest

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    ingest(sample_coco, "train2017", db_path)
    with start_simulator(SimConfig()) as one, start_simulator(SimConfig()) as two:
        endpoints = write_endpoints(tmp_path / "endpoints.toml", {
            "one": {"base_url": one.base_url, "rpm": 3000}, "two": {"base_url": two.base_url, "rpm": 3000}})
        app, runner = get_app(), CliRunner()
        clash = runner.invoke(app, ["generate", "--db", str(db_path), "--endpoints", str(endpoints), "--rpm", "60",
                                    "--no-progress"])
        assert clash.exit_code == 2 and "drop rpm" in clash.output and "Traceback" not in clash.output
        estimate = runner.invoke(app, ["estimate", "--db", str(db_path), "--endpoints", str(endpoints),
                                       "--types", "conversation", "--limit", "2", "--model", "gpt-4o-mini"])
        assert estimate.exit_code == 0, estimate.output
        assert "all at one" in estimate.output and "shared by rpm" in estimate.output
        result = runner.invoke(app, ["generate", "--db", str(db_path), "--endpoints", str(endpoints),
                                     "--types", "conversation", "--limit", "2", "--model", "gpt-4o-mini",
                                     "--no-progress"])
        assert result.exit_code == 0, result.output
        assert len(one.log) + len(two.log) == 2
    assert "endpoints" in result.output and "one" in result.output and "two" in result.output
    bad = write_endpoints(tmp_path / "bad.toml", {"x": {"base_url": "http://127.0.0.1:1/v1", "rpm": 0}})
    result = CliRunner().invoke(get_app(), ["generate", "--db", str(db_path), "--endpoints", str(bad),
                                            "--no-progress"])
    assert result.exit_code == 2 and "endpoint 'x': rpm:" in result.output and "Traceback" not in result.output


# `vistune generate` with small claim chunks (the CLI has no flag for them), so that two processes share the plan.
CLI = [sys.executable, "-c",
       "import schemas.generation as g\n"
       "fields = g.GenerateConfig.model_fields\n"
       "fields['claim_chunk'].default, fields['claim_poll_s'].default = 8, 0.3\n"
       "g.GenerateConfig.model_rebuild(force=True)\n"
       "from flows.cli import main\n"
       "main()"]


def test_two_processes_on_one_endpoints_file_send_each_request_once(db_path: Path, tmp_path: Path) -> None:
    synthetic_images(db_path, 80)
    with start_simulator(SimConfig(rpm=1200)) as one, start_simulator(SimConfig(rpm=2400)) as two:
        endpoints = write_endpoints(tmp_path / "endpoints.toml", {
            "one": {"base_url": one.base_url, "rpm": 1200, "api_key_env": "VISTUNE_TEST_KEY"},
            "two": {"base_url": two.base_url, "rpm": 2400, "api_key_env": "VISTUNE_TEST_KEY"},
        })
        env = {**os.environ, "VISTUNE_TEST_KEY": GOOD_KEY, "PYTHONPATH": str(REPO)}
        env.pop("OPENAI_API_KEY", None)
        command = [*CLI, "generate", "--db", str(db_path), "--endpoints", str(endpoints), "--types",
                   "complex_reasoning", "--model", "gpt-4o-mini", "--concurrency", "8", "--no-progress"]
        runs = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True) for _ in range(2)]
        outputs = [run.communicate(timeout=240)[0] for run in runs]
        assert [run.returncode for run in runs] == [0, 0], outputs
        served = served_ok(one, two)
    assert len(served) == 80 and max(served.values()) == 1  # each request paid once, by either process
    assert len(one.log) > 0 and len(two.log) > 0
    ok = store.query("SELECT count(DISTINCT request_id) AS n, count(*) AS rows FROM responses WHERE status = 'ok'",
                     path=db_path)[0]
    assert ok == {"n": 80, "rows": 80}
    assert len(store.query("SELECT run_id FROM runs WHERE kind = 'generate'", path=db_path)) >= 2


def test_a_shared_limiter_gives_each_endpoint_its_own_bucket_for_every_process(tmp_path: Path) -> None:
    shared = SharedRateLimiter(tmp_path / "limits.sqlite", name="endpoints")
    a = shared.for_endpoint("a|http://x/v1", rpm=60, tpm=None)
    a_elsewhere = SharedRateLimiter(tmp_path / "limits.sqlite").for_endpoint("a|http://x/v1", rpm=60, tpm=None)
    b = shared.for_endpoint("b|http://y/v1", rpm=60, tpm=None)
    assert a.wait_estimate_s() == 0.0
    assert a.try_acquire() == 0.0  # the one permit a 1 s burst holds at 60 RPM
    assert a_elsewhere.wait_estimate_s() > 0.5  # the same endpoint's bucket, seen from another limiter
    assert b.wait_estimate_s() == 0.0  # another endpoint is untouched


def test_a_database_from_before_gains_the_endpoint_column(db_path: Path) -> None:
    store.ensure_schema(db_path)
    with store.write(db_path) as con:
        con.execute("ALTER TABLE responses DROP COLUMN endpoint")
    store._migrated.discard(str(db_path.resolve()))  # as a new process would see the file
    store._migrated.discard(str(db_path))
    store.ensure_schema(db_path)
    columns = {r["column_name"] for r in store.query(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'responses'", path=db_path)}
    assert "endpoint" in columns
