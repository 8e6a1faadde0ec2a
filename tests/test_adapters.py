"""Format adapters: detection and mapping of real-world log shapes to canonical records.

The fixtures in ``tests/fixtures/adapters/`` mimic what the tools actually write (LiteLLM
SpendLogs rows and StandardLoggingPayload, OTLP JSON with GenAI semconv spans, gateway-logged
OpenAI pairs), so a mapping regression shows up as a wrong field here, not as a silently
empty column in the store.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distillguard.errors import IngestError
from distillguard.ingest.adapters import FORMATS, detect_format, expand

FIXTURES = Path(__file__).parent / "fixtures" / "adapters"


def _jsonl(name: str) -> list[dict]:
    with open(FIXTURES / name, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _otlp() -> dict:
    with open(FIXTURES / "otel_genai_spans.json", encoding="utf-8") as fh:
        return json.load(fh)


def _expand_all(fmt: str, objs: list[dict]) -> list[dict]:
    return [rec for obj in objs for rec in expand(fmt, obj)]


# --- detection ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "fmt"),
    [
        ("canonical.jsonl", "canonical"),
        ("openai_pairs.jsonl", "openai"),
        ("litellm_spend_logs.jsonl", "litellm"),
        ("litellm_standard_payload.jsonl", "litellm"),
    ],
)
def test_detect_format_jsonl_fixtures(fixture: str, fmt: str) -> None:
    assert detect_format(_jsonl(fixture)) == fmt
    # every single line is recognisable on its own too (core may sample just one)
    for obj in _jsonl(fixture):
        assert detect_format([obj]) == fmt


def test_detect_format_otlp_and_single_span_lines() -> None:
    otlp = _otlp()
    assert detect_format([otlp]) == "otel"
    span = otlp["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert detect_format([span]) == "otel"


def test_detect_format_majority_survives_one_bad_first_line() -> None:
    sample = [{"garbage": True}, *_jsonl("openai_pairs.jsonl")]
    assert detect_format(sample) == "openai"


@pytest.mark.parametrize(
    "sample",
    [
        [{"foo": 1, "bar": "baz"}],
        [{"message": "GET /health 200", "level": "info"}],
        [["not", "an", "object"], "text"],
    ],
)
def test_detect_format_rejects_unknown_shapes(sample: list) -> None:
    with pytest.raises(IngestError, match="cannot detect the log format"):
        detect_format(sample)


def test_detect_format_rejects_empty_sample() -> None:
    with pytest.raises(IngestError, match="no JSON objects"):
        detect_format([])


def test_canonical_with_json_response_text_is_not_mistaken_for_openai() -> None:
    rec = {"request_id": "r1", "ts": 1, "account_id": "a", "model": "m", "prompt": "p",
           "response": '{"choices": [1], "usage": {}}'}
    assert detect_format([rec]) == "canonical"


# --- canonical ------------------------------------------------------------------------------


def test_canonical_passes_through_unchanged() -> None:
    for obj in _jsonl("canonical.jsonl"):
        assert expand("canonical", obj) == [obj]


# --- openai ---------------------------------------------------------------------------------


def test_openai_pair_full_mapping() -> None:
    rec = expand("openai", _jsonl("openai_pairs.jsonl")[0])[0]
    assert rec["request_id"] == "chatcmpl-9xA1"
    assert rec["ts"] == "2025-03-04T10:15:02.481Z"  # gateway time wins over response.created
    assert rec["account_id"] == "acct_7f3a"  # explicit account_id beats the `user` param
    assert rec["end_user"] == "end-user-42"
    assert rec["model"] == "gpt-4o"  # requested model, not the resolved snapshot
    assert [m["role"] for m in rec["messages"]] == ["system", "user"]
    assert "integral of x^2" in rec["messages"][1]["content"]
    assert rec["input_tokens"] == 41 and rec["output_tokens"] == 12
    assert rec["response"] == "The integral is 9."
    assert rec["reasoning_content"] == "x^3/3 evaluated 0..3 = 9"
    assert rec["reasoning_effort"] == "high"
    assert rec["tools"][0]["function"]["name"] == "calc"
    assert rec["ip"] == "203.0.113.45"
    assert rec["user_agent"] == "python-httpx/0.27.0"
    assert rec["org_id"] == "org_91"
    assert "sk-live" not in json.dumps(rec)  # Authorization header never copied


def test_openai_body_variant_user_param_key_fingerprint_and_headers() -> None:
    rec = expand("openai", _jsonl("openai_pairs.jsonl")[1])[0]
    assert rec["request_id"] == "chatcmpl-9xA2"
    assert rec["ts"] == 1741083400  # response.created when no gateway timestamp
    assert rec["account_id"] == "u-1337"  # OpenAI `user` param
    assert rec["api_key_id"].startswith("sha256:")
    assert "sk-proj" not in json.dumps(rec)
    assert rec["ip"] == "198.51.100.7"  # first X-Forwarded-For hop
    assert rec["user_agent"] == "OpenAI/Python 1.51.0"
    # list-of-parts content is flattened to text; the image part is dropped
    assert rec["messages"] == [{"role": "user", "content": "Write a haiku about rust."}]
    assert rec["response"] == "Red bloom on iron"
    assert rec["logprobs"] is True and rec["top_logprobs"] == 5 and rec["n"] == 4


def test_openai_error_response_and_legacy_prompt() -> None:
    rec = expand("openai", _jsonl("openai_pairs.jsonl")[2])[0]
    assert rec["request_id"] == "req_failed_01"
    assert rec["ts"] == 1741083500.25
    assert rec["account_id"] == "acct_b22"
    assert rec["prompt"] == "Complete: the quick brown fox"
    assert "messages" not in rec
    assert rec["status"] == 429
    assert rec["ip"] == "2001:db8::17"
    assert "Rate limit" in rec["error"]
    assert "response" not in rec


def test_openai_responses_api_shape() -> None:
    rec = expand("openai", _jsonl("openai_pairs.jsonl")[3])[0]
    assert rec["request_id"] == "resp_67ccd2"
    assert rec["system"] == "Answer tersely."
    assert rec["messages"] == [{"role": "user", "content": "Name three sorting algorithms."}]
    assert rec["response"] == "Quicksort, mergesort, heapsort."
    assert rec["reasoning_effort"] == "low"
    assert (rec["input_tokens"], rec["output_tokens"]) == (20, 8)
    assert rec["status"] == "completed"


def test_openai_api_key_precedence_when_no_account_or_user() -> None:
    obj = {"api_key_id": "key_123", "request": {"model": "m", "messages": []},
           "response": {"id": "x", "created": 1}}
    assert expand("openai", obj)[0]["account_id"] == "key_123"


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ({"request": "not json at all", "response": None}, "not a JSON object"),
        ({"request": ["a", "list"]}, "not a JSON object"),
        ({"timestamp": "2025-01-01T00:00:00Z", "user": "u"}, "no request or response body"),
    ],
)
def test_openai_malformed_raises_value_error(obj: dict, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        expand("openai", obj)


# --- litellm --------------------------------------------------------------------------------


def test_litellm_spend_log_rows() -> None:
    first, second, third = _expand_all("litellm", _jsonl("litellm_spend_logs.jsonl"))

    assert first["request_id"] == "chatcmpl-5c1e"
    assert first["ts"] == "2025-03-04T11:02:13.120000Z"
    assert first["account_id"] == "customer-881"  # end_user beats the key's internal user
    assert first["org_id"] == "org-acme"
    assert first["team_id"] == "team-research"
    assert first["api_key_id"].startswith("88dc28d0")
    assert first["model"] == "gpt-4o"
    assert first["messages"][0]["content"].startswith("Explain, thinking step by step")
    assert first["response"] == "Rayleigh scattering..."
    assert (first["input_tokens"], first["output_tokens"]) == (58, 38)
    assert first["ip"] == "192.0.2.10"
    assert first["call_type"] == "acompletion"
    assert first["spend"] == pytest.approx(0.000412)

    # metadata as a JSON string, messages "{}" → prompt from proxy_server_request
    assert second["account_id"] == "internal-user-9"  # end_user "" is treated as missing
    assert second["org_id"] == "team-web"  # no org id: team id from metadata
    assert second["messages"] == [
        {"role": "user", "content": "Translate 'good morning' to French."}]
    assert second["user_agent"] == "curl/8.5.0"
    assert second["ip"] == "198.51.100.23"
    assert second["reasoning_effort"] == "medium"
    assert "response" not in second

    # no user/end_user at all: the hashed key identifies the account
    assert third["account_id"] == third["api_key_id"] == (
        "c0ffee00112233445566778899aabbccddeeff00112233445566778899aabbcc")
    assert third["status"] == "failure"


def test_litellm_standard_logging_payload() -> None:
    first, second = _expand_all("litellm", _jsonl("litellm_standard_payload.jsonl"))

    assert first["request_id"] == "chatcmpl-2299b6a3-ce4e-4f1d-8b4b-3ac1d1e8c0a4"
    assert first["ts"] == pytest.approx(1741090000.123456)
    assert first["account_id"] == "phd-student-4"  # metadata.user_api_key_user_id
    assert first["org_id"] == "org-uni"
    assert first["api_key_id"].startswith("5f1c0b9e")
    assert first["ip"] == "203.0.113.99"
    assert first["user_agent"] == "LangChain/0.3.1"
    assert first["messages"][1]["content"].startswith("Rate this answer")
    assert first["response"] == "Score: 7/10"
    assert (first["input_tokens"], first["output_tokens"]) == (50, 25)
    assert first["reasoning_effort"] == "low"
    assert first["logprobs"] is True and first["top_logprobs"] == 20

    assert second["account_id"] == "shopper-12"
    assert second["prompt"] == "Once upon a time"
    assert second["status"] == "failure"
    assert second["org_id"] == "team-web"


def test_litellm_wrapped_standard_logging_object() -> None:
    payload = _jsonl("litellm_standard_payload.jsonl")[0]
    wrapped = {"standard_logging_object": payload, "litellm_call_id": "abc"}
    assert detect_format([wrapped]) == "litellm"
    assert expand("litellm", wrapped) == expand("litellm", payload)


@pytest.mark.parametrize(
    "obj",
    [
        {"request_id": "r1", "model": "gpt-4o"},  # no call_type
        {"call_type": "acompletion", "model": "gpt-4o"},  # no id of any kind
    ],
)
def test_litellm_malformed_raises_value_error(obj: dict) -> None:
    with pytest.raises(ValueError, match="not a LiteLLM log row"):
        expand("litellm", obj)


# --- otel -----------------------------------------------------------------------------------


def test_otel_expands_only_genai_generation_spans() -> None:
    records = expand("otel", _otlp())
    # 6 spans: one HTTP server span and one embeddings span are skipped
    assert [r["model"] for r in records] == [
        "gpt-4o", "gpt-4-turbo", "gpt-4o-mini", "gemini-2.0-flash"]


def test_otel_current_conventions_span() -> None:
    rec = expand("otel", _otlp())[0]
    assert rec["request_id"] == "chatcmpl-otel-1"
    assert rec["ts"] == pytest.approx(1741093200.123456789)
    assert rec["account_id"] == "acct_otel_1"
    assert rec["ip"] == "198.51.100.77"
    assert rec["user_agent"] == "openai-node/4.77.0"
    assert rec["messages"] == [
        {"role": "user", "content": "Refactor this function to be iterative."}]
    assert rec["system"] == "You are a senior Python reviewer."
    assert rec["response"] == "Here is an iterative version..."
    assert (rec["input_tokens"], rec["output_tokens"]) == (31, 17)  # intValue strings
    assert rec["status"] == "ok"
    assert rec["trace_id"] == "5b8efff798038103d269b633813fc60c"
    assert rec["service_name"] == "inference-gateway"
    assert rec["duration_s"] == pytest.approx(1.5)


def test_otel_legacy_events_span() -> None:
    rec = expand("otel", _otlp())[1]
    assert rec["request_id"] == "0af7651916cd43dd8448eb211c80319c:b7ad6b7169203331"
    assert rec["account_id"] == "acct_legacy_2"  # enduser.id
    assert rec["ip"] == "192.0.2.200"  # http.client_ip
    assert rec["user_agent"] == "legacy-client/1.0"
    assert rec["messages"] == [{"role": "user", "content": "List the first five primes."}]
    assert rec["response"] == "2, 3, 5, 7, 11"
    assert (rec["input_tokens"], rec["output_tokens"]) == (12, 40)  # prompt/completion_tokens


def test_otel_resource_attributes_apply_and_span_attributes_win() -> None:
    _, _, indexed, events = expand("otel", _otlp())
    assert indexed["account_id"] == "acct_batch_3"  # from the resource
    assert indexed["ip"] == "203.0.113.5"
    assert [m["role"] for m in indexed["messages"]] == ["system", "user"]  # gen_ai.prompt.N.*
    assert indexed["response"] == "Grade: B+"
    assert events["account_id"] == "acct_span_override"  # span attribute beats resource
    assert events["messages"] == [
        {"role": "system", "content": "Be concise."},
        {"role": "user", "content": "Summarise the French revolution."},
    ]
    assert events["response"] == "It began in 1789..."
    assert events["status"] == "429"  # error.type


def test_otel_single_otlp_span_line() -> None:
    span = _otlp()["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    (rec,) = expand("otel", span)
    assert rec["request_id"] == "chatcmpl-otel-1"
    assert rec["account_id"] == "acct_otel_1"
    non_genai = _otlp()["resourceSpans"][0]["scopeSpans"][0]["spans"][1]
    assert expand("otel", non_genai) == []


def test_otel_python_sdk_json_span_with_structured_messages() -> None:
    """The Python SDK's ``span.to_json()`` form: plain attribute dicts, ISO times."""
    span = {
        "name": "chat gpt-4o",
        "context": {"trace_id": "0x5b8efff798038103d269b633813fc60c",
                    "span_id": "0x051581bf3cb55c13", "trace_state": "[]"},
        "kind": "SpanKind.CLIENT",
        "start_time": "2025-03-04T10:00:00.123456Z",
        "end_time": "2025-03-04T10:00:01.000000Z",
        "status": {"status_code": "ERROR", "description": "boom"},
        "attributes": {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.input.messages": [
                {"role": "user", "parts": [{"type": "text", "content": "hi there"}]}],
            "gen_ai.prompt": "ignored because input.messages wins",
        },
        "events": [],
        "resource": {"attributes": {"service.name": "app", "user.id": "acct_sdk"}},
    }
    assert detect_format([span]) == "otel"
    (rec,) = expand("otel", span)
    assert rec["ts"] == "2025-03-04T10:00:00.123456Z"
    assert rec["account_id"] == "acct_sdk"
    assert rec["messages"] == [{"role": "user", "content": "hi there"}]
    assert rec["status"] == "error"
    assert rec["request_id"] == "0x5b8efff798038103d269b633813fc60c:0x051581bf3cb55c13"


def test_otel_python_repr_prompt_and_plain_text_prompt() -> None:
    """The semconv example for the deprecated gen_ai.prompt is a Python repr, not JSON."""
    base = {"traceId": "t", "spanId": "s", "startTimeUnixNano": "1700000000000000000"}
    repr_span = {**base, "attributes": [
        {"key": "gen_ai.request.model", "value": {"stringValue": "m"}},
        {"key": "gen_ai.prompt", "value": {"stringValue": "[{'role': 'user', 'content': 'Q?'}]"}},
        {"key": "gen_ai.completion",
         "value": {"stringValue": "[{'role': 'assistant', 'content': 'A.'}]"}},
    ]}
    (rec,) = expand("otel", repr_span)
    assert rec["messages"] == [{"role": "user", "content": "Q?"}]
    assert rec["response"] == "A."
    assert rec["ts"] == pytest.approx(1_700_000_000.0)

    text_span = {**base, "attributes": [
        {"key": "gen_ai.request.model", "value": {"stringValue": "m"}},
        {"key": "gen_ai.prompt", "value": {"stringValue": "just a string prompt"}},
    ]}
    (rec,) = expand("otel", text_span)
    assert rec["prompt"] == "just a string prompt"
    assert "messages" not in rec


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ({"resourceSpans": {"not": "a list"}}, "resourceSpans"),
        ({"resourceSpans": [{"scopeSpans": [{"spans": ["x"]}]}]}, "not an object"),
        ({"resourceSpans": [{"scopeSpans": "nope"}]}, "not a list"),
        ({"hello": "world"}, "not OTLP JSON traces"),
        ({"traceId": "t", "spanId": "s", "attributes": "bad"}, "attributes must be a list"),
    ],
)
def test_otel_malformed_raises_value_error(obj: dict, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        expand("otel", obj)


# --- generic --------------------------------------------------------------------------------


def test_expand_rejects_non_objects_and_unknown_format() -> None:
    for fmt in FORMATS:
        with pytest.raises(ValueError, match="expected a JSON object"):
            expand(fmt, ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(IngestError, match="unknown log format"):
        expand("csv", {})


def test_every_adapter_emits_canonical_names_for_required_fields() -> None:
    """Whatever the source, the four required fields come out under canonical names."""
    sources = [
        ("openai", _jsonl("openai_pairs.jsonl")),
        ("litellm", _jsonl("litellm_spend_logs.jsonl") + _jsonl("litellm_standard_payload.jsonl")),
        ("otel", [_otlp()]),
    ]
    for fmt, objs in sources:
        for rec in _expand_all(fmt, objs):
            for field in ("request_id", "ts", "account_id", "model"):
                assert rec.get(field) not in (None, ""), (fmt, field, rec)
            assert "messages" in rec or "prompt" in rec, (fmt, rec)


def test_litellm_csv_export_row_with_string_columns() -> None:
    """Spend logs exported to CSV arrive with every column as a string."""
    row = {"request_id": "r-csv", "call_type": "acompletion", "api_key": "abc123hash",
           "startTime": "2025-03-04 11:05:40.003", "model": "gpt-4o", "prompt_tokens": "58",
           "completion_tokens": "7", "user": "", "end_user": "cust-1",
           "metadata": '{"user_api_key_org_id": "org-9", "requester_ip_address": "192.0.2.1"}',
           "messages": '[{"role": "user", "content": "hi"}]',
           "response": '{"choices": [{"message": {"content": "hello"}}]}'}
    assert detect_format([row]) == "litellm"
    (rec,) = expand("litellm", row)
    assert (rec["input_tokens"], rec["output_tokens"]) == (58, 7)
    assert rec["org_id"] == "org-9" and rec["ip"] == "192.0.2.1"
    assert rec["messages"] == [{"role": "user", "content": "hi"}]
    assert rec["response"] == "hello"


def test_expand_does_not_mutate_its_input() -> None:
    objs = [("openai", _jsonl("openai_pairs.jsonl")[1]),
            ("litellm", _jsonl("litellm_spend_logs.jsonl")[1]),
            ("otel", _otlp())]
    for fmt, obj in objs:
        before = json.dumps(obj, sort_keys=True)
        expand(fmt, obj)
        assert json.dumps(obj, sort_keys=True) == before
