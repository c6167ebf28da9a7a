"""The OpenAI-compatible simulator, exercised through the real `openai` client."""

from __future__ import annotations

import json
import socket
import time
from collections import Counter

import httpx
import openai
import pytest

from tasks.prompting import prompts
from tasks.prompting.formats import OutputFormatError, json_schema, parse
from tests.sim import FAULT_NAMES, SimConfig, answered, answered_twice, start_simulator, start_simulator_process
from tests.sim.__main__ import parse_args
from tests.sim.content import detect_sample_type
from tests.sim.faults import Dice
from tests.sim.server import bind_socket
from tests.sim.tokens import PrefixCache, tiktoken_tokens

TYPES = ("conversation", "detail_description", "complex_reasoning")
BEACH = (
    "A man riding a brown horse on a sandy beach.\n"
    "Two people walk along the shore near the water.\n"
    "A horse and its rider at the edge of the ocean.\n\n"
    "person: [0.1, 0.2, 0.3, 0.4]\nperson: [0.5, 0.2, 0.6, 0.4]\nhorse: [0.2, 0.3, 0.5, 0.9]"
)
KITCHEN = (
    "A woman cuts vegetables on a wooden counter in a kitchen.\n"
    "A kitchen with a stove, a sink and a bowl of fruit.\n\n"
    "oven: [0.0, 0.4, 0.3, 1.0]\nbowl: [0.6, 0.5, 0.7, 0.6]\nknife: [0.4, 0.5, 0.45, 0.55]"
)


def messages(context: str, system: str = "You write training data about images.") -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": context}]


def structured(type_name: str) -> dict:
    return {"type": "json_schema", "json_schema": json_schema(type_name)}


@pytest.fixture(scope="module")
def sim():
    with start_simulator(SimConfig(seed=7)) as handle:
        yield handle


@pytest.fixture(scope="module")
def client(sim) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.base_url, api_key="sk-sim-test", max_retries=0, timeout=10)


# --- content -------------------------------------------------------------------------------------


@pytest.mark.parametrize("type_name", TYPES)
def test_structured_output_is_valid_for_each_sample_type_and_follows_the_image(client, type_name):
    beach = client.chat.completions.create(
        model="gpt-4o-mini", messages=messages(BEACH), response_format=structured(type_name)
    )
    kitchen = client.chat.completions.create(
        model="gpt-4o-mini", messages=messages(KITCHEN), response_format=structured(type_name)
    )
    beach_sample = parse(type_name, "structured", beach.choices[0].message.content)
    kitchen_sample = parse(type_name, "structured", kitchen.choices[0].message.content)
    assert beach.choices[0].finish_reason == "stop"
    beach_text = beach_sample.model_dump_json().lower()
    assert "horse" in beach_text or "beach" in beach_text
    assert "horse" not in kitchen_sample.model_dump_json().lower()
    if type_name == "conversation":
        questions = [r.question for r in beach_sample.rounds]
        assert 2 <= len(questions) <= 4 and len(set(questions)) == len(questions)
    if type_name == "detail_description":
        assert beach_sample.description.count(". ") >= 2  # several sentences


def test_same_request_and_seed_give_the_same_answer_and_another_seed_may_differ(client):
    ask = dict(model="gpt-4o-mini", messages=messages(BEACH), response_format=structured("conversation"))
    first = client.chat.completions.create(**ask).choices[0].message.content
    assert client.chat.completions.create(**ask).choices[0].message.content == first
    with start_simulator(SimConfig(seed=8)) as other:
        answers = set()
        for context in (BEACH, KITCHEN, BEACH + "\nA dog runs along the sand."):
            ask["messages"] = messages(context)
            answers.add(other_client(other).chat.completions.create(**ask).choices[0].message.content)
        assert len(answers) == 3


def other_client(handle) -> openai.OpenAI:
    return openai.OpenAI(base_url=handle.base_url, api_key="sk-sim-test", max_retries=0, timeout=10)


@pytest.mark.parametrize("type_name", TYPES)
def test_llava_text_parses_when_the_type_comes_from_metadata(client, type_name):
    reply = client.chat.completions.create(
        model="gpt-4o-mini", messages=messages(KITCHEN), metadata={"vistune_sample_type": type_name}
    )
    content = reply.choices[0].message.content
    sample = parse(type_name, "llava-text", content)
    if type_name == "detail_description":
        assert "Question:" not in content and "kitchen" in sample.description.lower()
    else:
        assert content.startswith("Question:\n") and "\n===\nAnswer:\n" in content


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("output_format", ["structured", "llava-text"])
def test_the_project_prompts_are_recognised_and_answered_in_their_format(client, type_name, output_format):
    ctx = prompts.ImageContext(
        image_id=1,
        width=640,
        height=480,
        captions=("A red bus parked at a stop on a city street.", "People wait to board a large red bus."),
        objects=(prompts.ObjectBox("bus", (0.1, 0.2, 0.9, 0.8)), prompts.ObjectBox("person", (0.0, 0.5, 0.1, 0.9))),
    )
    msgs, _ = prompts.build_messages(ctx, type_name, output_format)
    body = {"messages": msgs}
    extra = {}
    if output_format == "structured":
        extra["response_format"] = body["response_format"] = structured(type_name)
    assert detect_sample_type(body) == type_name
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=msgs, **extra)
    assert "bus" in parse(type_name, output_format, reply.choices[0].message.content).model_dump_json()


# --- usage ---------------------------------------------------------------------------------------


def test_usage_counts_tokens_and_a_long_static_prefix_is_cached_after_first_sight(client):
    system = "Describe images for a dataset. " * 300  # well past the 1024-token cache threshold
    first = client.chat.completions.create(model="gpt-4o", messages=messages(BEACH, system)).usage
    second = client.chat.completions.create(model="gpt-4o", messages=messages(KITCHEN, system)).usage
    system_tokens = 3 + tiktoken_tokens(system)
    assert first.prompt_tokens == system_tokens + 3 + tiktoken_tokens(BEACH) + 3
    assert first.prompt_tokens_details.cached_tokens == 0
    cached = second.prompt_tokens_details.cached_tokens
    assert 1024 <= cached <= system_tokens and (cached - 1024) % 128 == 0 and system_tokens - cached < 128
    assert first.completion_tokens > 20 and first.total_tokens == first.prompt_tokens + first.completion_tokens


def test_prefix_cache_ignores_short_prefixes():
    cache = PrefixCache(min_tokens=1024, block_tokens=128)
    assert [cache.cached_tokens("m", 1, 900) for _ in range(2)] == [0, 0]
    assert [cache.cached_tokens("m", 2, 1300) for _ in range(2)] == [0, 1280]


def test_max_tokens_truncates_with_finish_reason_length(client):
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=messages(BEACH), max_tokens=10)
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 10


def test_bad_request_gets_an_openai_shaped_400(sim):
    r = httpx.post(f"{sim.base_url}/chat/completions", json={"model": "m", "messages": []})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error" and r.json()["error"]["param"] == "messages"


# --- rate limits ---------------------------------------------------------------------------------


def test_rpm_limit_answers_429_with_retry_after_and_headers():
    with start_simulator(SimConfig(rpm=3)) as handle:
        client = other_client(handle)
        raw = client.chat.completions.with_raw_response.create(model="m", messages=messages(BEACH))
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        assert raw.headers["x-ratelimit-remaining-requests"] == "2"
        assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
        for _ in range(2):
            client.chat.completions.create(model="m", messages=messages(KITCHEN))
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="m", messages=messages(BEACH))
        response = caught.value.response
        assert int(response.headers["retry-after"]) >= 1
        assert 15_000 <= int(response.headers["retry-after-ms"]) <= 20_000  # one request refills in 20 s
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
        assert [r.status for r in handle.log] == [200, 200, 200, 429]
        assert handle.log[-1].attempt == 0  # a rejected request is not an attempt: fault rolls stay put


def test_a_short_rate_window_allows_only_a_small_burst():
    with start_simulator(SimConfig(rpm=600, rate_window_s=0.5)) as handle:  # 10/s, bursts of 5
        client = other_client(handle)
        codes = []
        for i in range(8):
            try:
                client.chat.completions.create(model="m", messages=messages(f"{BEACH}\nShot {i}."))
                codes.append(200)
            except openai.RateLimitError as exc:
                codes.append(429)
                assert int(exc.response.headers["retry-after-ms"]) <= 100
        assert codes[:5] == [200] * 5 and 429 in codes[5:]


def test_tpm_limit_counts_prompt_plus_max_tokens():
    with start_simulator(SimConfig(tpm=300)) as handle:
        client = other_client(handle)
        client.chat.completions.create(model="m", messages=messages(BEACH), max_tokens=150)
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="m", messages=messages(BEACH), max_tokens=150)
        assert caught.value.response.json()["error"]["type"] == "tokens"
        assert "retry-after-ms" in caught.value.response.headers
        with pytest.raises(openai.RateLimitError, match="Request too large"):
            client.chat.completions.create(model="m", messages=messages(BEACH), max_tokens=1000)


# --- faults and latency --------------------------------------------------------------------------


def test_fault_rates_are_honoured_and_repeatable_under_a_seed():
    rates = dict(fault_429=0.1, fault_5xx=0.05, fault_hang=0.02, fault_malformed=0.03, fault_refusal=0.05)
    config = SimConfig(seed=3, **rates)
    picks = Counter(Dice(config).fault(body_key, 1) for body_key in range(20_000))
    assert abs(picks["500"] + picks["503"] - 1000) < 150 and picks["500"] > 350 and picks["503"] > 350
    for name in ("429", "hang", "malformed", "refusal"):
        expected = 20_000 * rates[f"fault_{name}"]
        assert abs(picks[name] - expected) < 5 * expected**0.5, (name, picks[name])
    assert [Dice(config).fault(k, 1) for k in range(500)] == [Dice(config).fault(k, 1) for k in range(500)]
    assert [Dice(config).fault(k, 1) for k in range(500)] != [Dice(config).fault(k, 2) for k in range(500)]
    assert [Dice(config).fault(k, 1) for k in range(500)] != [
        Dice(config.model_copy(update={"seed": 4})).fault(k, 1) for k in range(500)
    ]


def test_each_fault_has_the_shape_of_the_real_thing():
    def only(name: str) -> SimConfig:
        return SimConfig(**{f"fault_{name}": 1.0}, fault_retry_after_ms=250)

    with start_simulator(only("429")) as handle, pytest.raises(openai.RateLimitError) as caught:
        other_client(handle).chat.completions.create(model="m", messages=messages(BEACH))
    assert caught.value.response.headers["retry-after-ms"] == "250"
    with start_simulator(only("5xx")) as handle:
        codes = set()
        for context in (BEACH, KITCHEN, BEACH + "!", KITCHEN + "!", BEACH + "?", KITCHEN + "?"):
            with pytest.raises(openai.InternalServerError) as caught:
                other_client(handle).chat.completions.create(model="m", messages=messages(context))
            codes.add(caught.value.status_code)
        assert codes == {500, 503}
    with start_simulator(only("malformed")) as handle:
        for fmt, extra in (("structured", {"response_format": structured("conversation")}), ("llava-text", {})):
            reply = other_client(handle).chat.completions.create(
                model="m", messages=messages(BEACH), metadata={"vistune_sample_type": "conversation"}, **extra
            )
            assert reply.choices[0].finish_reason == "stop"
            with pytest.raises(OutputFormatError):
                parse("conversation", fmt, reply.choices[0].message.content)
    with start_simulator(only("length")) as handle:
        reply = other_client(handle).chat.completions.create(
            model="m", messages=messages(BEACH), response_format=structured("complex_reasoning")
        )
        assert reply.choices[0].finish_reason == "length"
        with pytest.raises(OutputFormatError):
            parse("complex_reasoning", "structured", reply.choices[0].message.content)
    with start_simulator(only("content_filter")) as handle:
        reply = other_client(handle).chat.completions.create(model="m", messages=messages(BEACH))
        assert reply.choices[0].finish_reason == "content_filter" and reply.choices[0].message.content is None
    with start_simulator(only("refusal")) as handle:
        json_reply = other_client(handle).chat.completions.create(
            model="m", messages=messages(BEACH), response_format=structured("conversation")
        )
        text_reply = other_client(handle).chat.completions.create(model="m", messages=messages(BEACH))
        assert json_reply.choices[0].message.refusal and json_reply.choices[0].message.content is None
        assert text_reply.choices[0].message.content.startswith("I'm sorry")
        assert [r.fault for r in handle.log] == ["refusal", "refusal"]


def test_a_retry_of_the_same_body_gets_a_fresh_roll():
    with start_simulator(SimConfig(seed=1, fault_5xx=0.5)) as handle:
        client = other_client(handle)
        outcomes = []
        for _ in range(12):
            try:
                client.chat.completions.create(model="m", messages=messages(BEACH))
                outcomes.append(200)
            except openai.InternalServerError as exc:
                outcomes.append(exc.status_code)
        assert 200 in outcomes and len(set(outcomes)) > 1
        assert [r.attempt for r in handle.log] == list(range(1, 13))
        assert len({r.body_hash for r in handle.log}) == 1
        assert answered_twice(handle.log) == {handle.log[0].body_hash: outcomes.count(200)}


def test_a_hang_outlasts_the_client_timeout_and_is_logged_unanswered():
    with start_simulator(SimConfig(fault_hang=1.0, hang_s=60)) as handle:
        client = openai.OpenAI(base_url=handle.base_url, api_key="k", max_retries=0, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(model="m", messages=messages(BEACH))
        assert 0.5 <= time.monotonic() - started < 5
        assert [(r.status, r.fault) for r in handle.log] == [(None, "hang")]
        stop_started = time.monotonic()
    assert time.monotonic() - stop_started < 5  # stopping releases hanging requests


def test_a_client_that_times_out_during_latency_is_logged_as_499_not_200():
    with start_simulator(SimConfig(latency_ms=1500)) as handle:
        client = openai.OpenAI(base_url=handle.base_url, api_key="k", max_retries=0, timeout=0.3)
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(model="m", messages=messages(BEACH))
        deadline = time.monotonic() + 5
        while not handle.log and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [r.status for r in handle.log] == [499]


def test_latency_distributions_have_the_requested_mean():
    keys = range(4000)
    for kind in ("uniform", "lognormal"):
        dice = Dice(SimConfig(latency=kind, latency_ms=200, latency_spread=0.5))
        samples = [dice.latency_s(k, 1) for k in keys]
        assert abs(sum(samples) / len(samples) - 0.2) < 0.01 and len(set(samples)) > 3000
        assert min(samples) >= 0
    assert Dice(SimConfig(latency_ms=0)).latency_s(1, 1) == 0.0
    with start_simulator(SimConfig(latency_ms=300)) as handle:
        started = time.monotonic()
        other_client(handle).chat.completions.create(model="m", messages=messages(BEACH))
        assert time.monotonic() - started >= 0.3


# --- files and batches ---------------------------------------------------------------------------


def batch_lines(n: int, model: str = "gpt-4o-mini") -> bytes:
    rows = [
        {
            "custom_id": f"row-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": messages(f"{BEACH}\nPhoto number {i} of a long series.")},
        }
        for i in range(n)
    ]
    return "\n".join(json.dumps(r) for r in rows).encode()


def wait_for(client: openai.OpenAI, batch_id: str, timeout_s: float = 10):
    deadline = time.monotonic() + timeout_s
    while (batch := client.batches.retrieve(batch_id)).status not in ("completed", "failed", "cancelled"):
        assert time.monotonic() < deadline, batch
        time.sleep(0.05)
    return batch


def test_batch_end_to_end_with_row_faults():
    with start_simulator(SimConfig(seed=5, batch_delay_s=0.2, fault_5xx=0.2, fault_hang=0.1)) as handle:
        client = other_client(handle)
        uploaded = client.files.create(file=("in.jsonl", batch_lines(60)), purpose="batch")
        assert client.files.retrieve(uploaded.id).bytes == len(batch_lines(60))
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert batch.status == "validating"
        done = wait_for(client, batch.id)
        assert done.status == "completed" and done.request_counts.total == 60
        output = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
        errors = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
        assert len(output) == done.request_counts.completed and len(errors) == done.request_counts.failed
        assert len(output) + len(errors) == 60 and 0 < len(errors) < 40
        assert {r["custom_id"] for r in output + errors} == {f"row-{i}" for i in range(60)}
        for row in output:
            assert row["response"]["status_code"] == 200 and row["error"] is None
            parse("detail_description", "llava-text", row["response"]["body"]["choices"][0]["message"]["content"])
        assert all(
            (e["response"] or {}).get("status_code") in (500, 503) or e["error"]["code"] == "batch_expired"
            for e in errors
        )
        served = [r for r in handle.log if r.batch_id == batch.id and r.status == 200]
        assert sorted(r.custom_id for r in served) == sorted(r["custom_id"] for r in output)
        assert [b.id for b in client.batches.list()] == [batch.id]


def test_batch_limits_and_cancel():
    config = SimConfig(batch_delay_s=30, max_batch_requests=5, max_file_bytes=4000)
    with start_simulator(config) as handle:
        client = other_client(handle)
        with pytest.raises(openai.BadRequestError, match="at most 4000 bytes"):
            client.files.create(file=("big.jsonl", b"x" * 4001), purpose="batch")
        too_many = client.files.create(file=("six.jsonl", batch_lines(6)), purpose="batch")
        failed = wait_for(
            client,
            client.batches.create(
                input_file_id=too_many.id, endpoint="/v1/chat/completions", completion_window="24h"
            ).id,
        )
        assert failed.status == "failed" and failed.errors.data[0].code == "too_many_requests"
        mixed = batch_lines(2) + b"\n" + batch_lines(1, model="gpt-4o").replace(b"row-0", b"row-9")
        mixed_batch = client.batches.create(
            input_file_id=client.files.create(file=("m.jsonl", mixed), purpose="batch").id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        assert wait_for(client, mixed_batch.id).errors.data[0].code == "mixed_models"
        slow = client.batches.create(
            input_file_id=client.files.create(file=("ok.jsonl", batch_lines(3)), purpose="batch").id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        assert client.batches.cancel(slow.id).status == "cancelling"
        cancelled = wait_for(client, slow.id)
        assert cancelled.status == "cancelled" and cancelled.output_file_id is None
        with pytest.raises(openai.NotFoundError):
            client.batches.retrieve("batch_missing")


# --- as a process --------------------------------------------------------------------------------


def test_process_serves_and_logs_every_request_to_jsonl(tmp_path):
    log_path = tmp_path / "served.jsonl"
    with start_simulator_process(SimConfig(log_path=log_path, fault_5xx=0.5, seed=2)) as proc:
        client = other_client(proc)
        codes = []
        for context in (BEACH, KITCHEN, BEACH + "\nAt sunset.", KITCHEN + "\nAt night."):
            try:
                client.chat.completions.create(model="m", messages=messages(context))
                codes.append(200)
            except openai.InternalServerError as exc:
                codes.append(exc.status_code)
        log = proc.read_log()
        assert [r["status"] for r in log] == codes and len({r["body_hash"] for r in log}) == 4
        assert len(answered(log)) == codes.count(200) and answered_twice(log) == {}
        assert proc.stats["requests"] == 4
    assert proc.process.returncode is not None and len(log_path.read_text().splitlines()) == 4


def test_listening_socket_says_tcp_so_asyncio_disables_nagle():
    # Without proto=IPPROTO_TCP asyncio skips TCP_NODELAY and every h11 response waits ~40 ms.
    sock = bind_socket("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


def test_command_line_flags_map_to_the_config():
    config = parse_args(
        [
            "--port",
            "8123",
            "--rpm",
            "600",
            "--latency",
            "lognormal",
            "--fault-5xx",
            "0.05",
            "--log",
            "served.jsonl",
            "--models",
            "a",
            "b",
        ]
    )
    assert (config.port, config.rpm, config.latency, config.fault_5xx) == (8123, 600, "lognormal", 0.05)
    assert str(config.log_path) == "served.jsonl" and config.models == ["a", "b"]
    assert set(FAULT_NAMES) == {"429", "5xx", "hang", "malformed", "length", "content_filter", "refusal"}
    with pytest.raises(SystemExit):
        parse_args(["--fault-429", "0.7", "--fault-5xx", "0.7"])
