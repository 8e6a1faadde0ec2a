"""Format adapters: turn the request logs people already have into canonical records.

Providers rarely log in distillguard's canonical shape (``docs/schema.md``); they have gateway
request/response pairs, LiteLLM spend logs or OpenTelemetry GenAI traces. Rather than asking
them to write a converter, ingest sniffs the format (:func:`detect_format`) and maps each
parsed JSON object to zero or more canonical records (:func:`expand`).

Division of labour with the ingest core, on purpose:

* adapters only *map names and shapes*. They never validate required fields (the core does,
  and quarantines bad rows with a reason), so a record may lack ``account_id`` etc.
* adapters raise ``ValueError(reason)`` only when an object is structurally not of the
  format (e.g. an OpenAI pair with neither a request nor a response body), so the core can
  quarantine that one row and carry on.
* timestamps stay in their native form (RFC 3339 string or epoch number); the core parses
  ``ts``. OTLP nanoseconds are the exception: they are converted to epoch seconds (float),
  because a 19-digit nanosecond integer would be misread as seconds or milliseconds.
* message content is flattened to a plain string here (text parts joined with newlines,
  non-text parts such as images dropped). Each source format has its own part shape (OpenAI
  ``{type: text, text}``, Responses API ``input_text``, OTel ``{type: text, content}``), so
  flattening where the shape is known is safer than hoping the core knows all of them.
  Only the ``canonical`` format passes content through untouched.
* useful fields with no canonical slot (``call_type``, ``logprobs``, ``trace_id``, ...) are
  emitted under their own names; the core keeps them in ``extra``.

Secrets: a raw API key (``sk-...``/``Bearer ...``) is never copied; it is replaced by a
``sha256:`` fingerprint so keys can still be linked without storing the credential.
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from distillguard.errors import IngestError

FORMATS = ("canonical", "openai", "litellm", "otel")

#: ``gen_ai.operation.name`` values of spans that are one model generation request.
GENAI_GENERATION_OPS = frozenset({"chat", "text_completion", "generate_content"})

_MAX_LITERAL_CHARS = 1_000_000  # bound on ast.literal_eval input (Python-repr prompts)


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def detect_format(sample: list[dict]) -> str:
    """Say which of :data:`FORMATS` the first few parsed objects of a file are in.

    Each object is classified on its own and the majority wins, so one malformed first line
    does not make a whole file unreadable (that row is quarantined later by ``expand``/core).
    Ties go to the format seen first. Raises :class:`IngestError` when nothing fits.
    """
    if not sample:
        raise IngestError("cannot detect the log format: the file has no JSON objects")
    votes: dict[str, int] = {}
    for obj in sample:
        fmt = _classify(obj)
        if fmt is not None:
            votes[fmt] = votes.get(fmt, 0) + 1
    if not votes:
        first = sample[0]
        keys = sorted(first)[:12] if isinstance(first, dict) else type(first).__name__
        raise IngestError(
            "cannot detect the log format: expected canonical records (request_id, ts, "
            "account_id, model, messages|prompt), OpenAI request/response pairs "
            "({request, response}), LiteLLM spend logs / StandardLoggingPayload (call_type, "
            "request_id|id, startTime) or OTLP JSON GenAI spans (resourceSpans); "
            f"first object has keys {keys}"
        )
    return max(votes, key=lambda f: votes[f])  # max keeps the first of equal counts


def expand(fmt: str, obj: dict) -> list[dict]:
    """Map one parsed JSON object of format ``fmt`` to zero or more canonical records.

    Raises ``ValueError`` with a reason when ``obj`` is structurally not of that format (the
    core quarantines the row), and :class:`IngestError` for an unknown ``fmt`` (a caller bug
    that would otherwise quarantine every row with the same message).
    """
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if fmt == "canonical":
        return [obj]
    if fmt == "openai":
        return [_expand_openai(obj)]
    if fmt == "litellm":
        return [_expand_litellm(obj)]
    if fmt == "otel":
        return _expand_otel(obj)
    raise IngestError(f"unknown log format {fmt!r}; expected one of {', '.join(FORMATS)}")


# --------------------------------------------------------------------------------------------
# detection
# --------------------------------------------------------------------------------------------


def _classify(obj: Any) -> str | None:
    """Best guess for one object; order matters (most specific markers first)."""
    if not isinstance(obj, dict):
        return None
    if _is_otel(obj):
        return "otel"
    if _is_litellm(obj):
        return "litellm"
    if _is_openai(obj):
        return "openai"
    required = {"request_id", "ts", "account_id", "model"}
    if len(required & obj.keys()) >= 2 or (
            "request_id" in obj and ("messages" in obj or "prompt" in obj)):
        return "canonical"
    return None


def _is_otel(obj: dict) -> bool:
    if any(k in obj for k in ("resourceSpans", "resource_spans")):
        return True
    if "scopeSpans" in obj or "scope_spans" in obj or "instrumentationLibrarySpans" in obj:
        return True
    return _looks_like_span(obj)


def _looks_like_span(obj: dict) -> bool:
    has_ids = any(k in obj for k in ("traceId", "trace_id", "spanId", "span_id")) or (
        isinstance(obj.get("context"), dict) and "span_id" in obj["context"]
    )
    return has_ids and "attributes" in obj


def _is_litellm(obj: dict) -> bool:
    if isinstance(obj.get("standard_logging_object"), dict):
        return True
    return "call_type" in obj and ("request_id" in obj or "id" in obj) and (
        "startTime" in obj or "spend" in obj or "api_key" in obj or "response_cost" in obj
    )


def _is_openai(obj: dict) -> bool:
    req = _as_obj(_first(obj, "request", "request_body", "body"))
    # a response *string* is not parsed here: canonical records carry the response text,
    # which may itself be JSON (e.g. a structured-output answer)
    resp = _first(obj, "response", "response_body")
    if isinstance(req, dict):
        body = _unwrap_body(req)
        if any(k in body for k in ("messages", "prompt", "input", "model")):
            return True
    return isinstance(resp, dict) and any(
        k in _unwrap_body(resp) for k in ("choices", "usage", "output")
    )


# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------


def _first(mapping: Mapping[str, Any] | None, *keys: str) -> Any:
    """First value under ``keys`` that is not None/empty-string (logs use "" for missing)."""
    if not mapping:
        return None
    for key in keys:
        value = mapping.get(key)
        if value is not None and value != "":
            return value
    return None


def _as_obj(value: Any) -> Any:
    """Parse JSON-in-a-string (common when logs are exported from SQL/CSV), else pass through."""
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in ("{", "["):
            try:
                return json.loads(text)
            except ValueError:
                return value
    return value


def _unwrap_body(container: dict) -> dict:
    """``{url, headers, body: {...}}`` wrappers (Portkey-style gateways) → the body."""
    body = _as_obj(container.get("body"))
    if isinstance(body, dict) and not any(k in container for k in ("messages", "model", "choices")):
        return body
    return container


def _str(value: Any) -> str | None:
    """Identifier-ish value as a string; dicts with an ``id`` (``user: {id: ...}``) unwrap."""
    if isinstance(value, dict):
        value = _first(value, "id", "user_id")
    if value is None or value == "" or isinstance(value, dict | list):
        return None
    return str(value)


def _int(value: Any) -> int | None:
    """Token counts arrive as int, float or (OTLP int64) decimal strings."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):  # int() first: float() would round 19-digit OTLP nanos
        try:
            return int(value.strip())
        except ValueError:
            pass
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        return None


def _key_id(api_key: Any) -> str | None:
    """Never keep a raw secret: fingerprint values that look like live keys."""
    key = _str(api_key)
    if key is None:
        return None
    if key.lower().startswith("bearer "):
        key = key[7:].strip()
    if key.startswith(("sk-", "sk_")) and len(key) > 12:
        return "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:16]
    return key


def _text(content: Any) -> str | None:
    """Flatten message content (string, or list of text parts of any vendor shape) to text."""
    if content is None:
        return None
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = [content]
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict):
                kind = part.get("type", "text")
                if kind in ("text", "input_text", "output_text") or "type" not in part:
                    value = _first(part, "text", "content")
                    if isinstance(value, str):
                        texts.append(value)
        return "\n".join(texts)
    return str(content)


def _messages(raw: Any) -> list[dict] | None:
    """Normalise a list of chat messages: content flattened, other keys kept (tool_calls...)."""
    raw = _as_obj(raw)
    if not isinstance(raw, list):
        return None
    out = []
    for msg in raw:
        if not isinstance(msg, dict):
            continue
        item = dict(msg)
        if "content" in item:
            item["content"] = _text(item["content"])
        elif "parts" in item:  # OTel GenAI message: {role, parts: [{type, content}]}
            item["content"] = _text(item.pop("parts"))
        out.append(item)
    return out


def _headers(*sources: Any) -> dict[str, Any]:
    """Merge header dicts, lower-cased, so lookups are case-insensitive."""
    merged: dict[str, Any] = {}
    for src in sources:
        src = _as_obj(src)
        if isinstance(src, dict):
            for key, value in src.items():
                merged.setdefault(str(key).lower(), value)
    return merged


def _forwarded_ip(headers: Mapping[str, Any]) -> str | None:
    xff = _str(headers.get("x-forwarded-for"))
    if xff:
        return xff.split(",")[0].strip() or None
    return _str(headers.get("x-real-ip"))


def _clean(record: dict[str, Any]) -> dict[str, Any]:
    """Drop empty values so the core sees "missing", not ``None``/``""``."""
    return {k: v for k, v in record.items() if v is not None and v != "" and v != [] and v != {}}


def _choice_text(resp: Any) -> tuple[str | None, str | None, str | None]:
    """(text, reasoning, finish_reason) of the first choice of a chat/completions response,
    or of a Responses API ``output``; ``resp`` may also be a plain string."""
    resp = _as_obj(resp)
    if isinstance(resp, str):
        return resp, None, None
    if not isinstance(resp, dict):
        return None, None, None
    choices = resp.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        msg = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        text = _text(msg.get("content")) if msg else _text(choice.get("text"))
        reasoning = _first(msg, "reasoning_content", "reasoning") if msg else None
        return text, _text(reasoning) if reasoning else None, _str(choice.get("finish_reason"))
    if isinstance(resp.get("output_text"), str):
        return resp["output_text"], None, None
    output = resp.get("output")
    if isinstance(output, list):  # Responses API: [{type: message, content: [output_text]}]
        texts = [_text(item.get("content")) for item in output
                 if isinstance(item, dict) and item.get("type", "message") == "message"]
        joined = "\n".join(t for t in texts if t)
        return joined or None, None, None
    return None, None, None


def _responses_input(value: Any) -> tuple[list[dict] | None, str | None]:
    """Responses API ``input``: a string (one user turn) or a list of message items."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}], None
    if isinstance(value, list):
        items = [i for i in value if isinstance(i, dict) and "role" in i]
        return _messages(items), None
    return None, None


def _prompt_text(value: Any) -> str | None:
    """Legacy completions ``prompt``: a string or a batch list of strings."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, str) for p in value):
        return "\n\n".join(value)
    return None


# --------------------------------------------------------------------------------------------
# openai: gateway-logged request/response pairs
# --------------------------------------------------------------------------------------------


def _expand_openai(obj: dict) -> dict:
    """One OpenAI-style request/response pair → one canonical record.

    Precedences (first non-empty wins):
      request_id  response.id > request_id > id > x-request-id header
      ts          timestamp > created_at > ts > time > start_time > response.created
                  (> response.created_at, Responses API)
                  (the gateway's request time is sub-second; ``created`` is whole seconds)
      account_id  account_id > user (top-level, then the OpenAI ``user`` param, then
                  ``safety_identifier``) > api_key_id > fingerprint of api_key
      model       request.model > response.model > model
    """
    req_raw = _as_obj(_first(obj, "request", "request_body", "body"))
    resp_raw = _as_obj(_first(obj, "response", "response_body"))
    if req_raw is not None and not isinstance(req_raw, dict):
        raise ValueError("OpenAI pair: 'request' is not a JSON object")
    if resp_raw is not None and not isinstance(resp_raw, dict | str):
        raise ValueError("OpenAI pair: 'response' is not a JSON object")
    req = _unwrap_body(req_raw) if isinstance(req_raw, dict) else {}
    resp = _unwrap_body(resp_raw) if isinstance(resp_raw, dict) else {}
    if not req and not resp:
        raise ValueError("not an OpenAI request/response pair: no request or response body")

    headers = _headers(obj.get("headers"), obj.get("request_headers"),
                       req_raw.get("headers") if isinstance(req_raw, dict) else None)
    resp_headers = _headers(obj.get("response_headers"),
                            resp_raw.get("headers") if isinstance(resp_raw, dict) else None)
    meta = _as_obj(obj.get("metadata"))
    meta = meta if isinstance(meta, dict) else {}

    messages = _messages(req.get("messages"))
    prompt = _prompt_text(req.get("prompt"))
    system = _text(req.get("system")) if req.get("system") else None  # Anthropic-style body
    if messages is None and prompt is None and "input" in req:  # Responses API
        messages, _ = _responses_input(req.get("input"))
        if messages is None and isinstance(req.get("input"), str | list):
            prompt = _prompt_text(req.get("input"))
    if req.get("instructions"):
        system = _text(req.get("instructions"))

    text, reasoning, finish = _choice_text(resp_raw if isinstance(resp_raw, str) else resp)
    usage = resp.get("usage") if isinstance(resp.get("usage"), dict) else {}
    reasoning_cfg = req.get("reasoning") if isinstance(req.get("reasoning"), dict) else {}
    error = resp.get("error") or obj.get("error")

    status = _first(obj, "status", "status_code", "http_status")
    if status is None and isinstance(resp_raw, dict):
        status = _first(resp_raw, "status_code", "status") if resp_raw is not resp else None
    if status is None and isinstance(resp.get("output"), list):
        status = _str(resp.get("status"))  # Responses API: completed | incomplete | failed
    if status is None and error:
        status = "error"

    account = _str(_first(obj, "account_id", "user", "user_id")) or _str(
        _first(req, "user", "safety_identifier")) or _str(_first(meta, "account_id", "user_id"))
    api_key_id = _str(_first(obj, "api_key_id", "key_id")) or _key_id(obj.get("api_key"))
    end_user = _str(req.get("user"))

    return _clean({
        "request_id": _str(_first(resp, "id")) or _str(_first(obj, "request_id", "id"))
        or _str(_first(resp_headers, "x-request-id")) or _str(_first(headers, "x-request-id")),
        "ts": _first(obj, "timestamp", "created_at", "ts", "time", "start_time")
        or _first(resp, "created", "created_at"),
        "account_id": account or api_key_id,
        "model": _str(_first(req, "model")) or _str(_first(resp, "model"))
        or _str(obj.get("model")),
        "messages": messages,
        "prompt": prompt if messages is None else None,
        "system": system,
        "tools": req.get("tools") if isinstance(req.get("tools"), list) else None,
        "reasoning_effort": _str(_first(req, "reasoning_effort"))
        or _str(reasoning_cfg.get("effort")),
        "input_tokens": _int(_first(usage, "prompt_tokens", "input_tokens")),
        "output_tokens": _int(_first(usage, "completion_tokens", "output_tokens")),
        "response": text,
        "status": status if isinstance(status, str | int) else None,
        "org_id": _str(_first(obj, "org_id", "organization_id", "organization"))
        or _str(headers.get("openai-organization")),
        "api_key_id": api_key_id,
        "ip": _str(_first(obj, "ip", "client_ip", "remote_addr", "ip_address"))
        or _forwarded_ip(headers),
        "user_agent": _str(_first(obj, "user_agent", "userAgent"))
        or _str(headers.get("user-agent")),
        "country": _str(_first(obj, "country")),
        # useful extras (kept by the core under `extra`)
        "reasoning_content": reasoning,
        "finish_reason": finish,
        "end_user": end_user if end_user != account else None,
        "endpoint": _str(_first(obj, "endpoint", "path", "url"))
        or (_str(req_raw.get("url")) if isinstance(req_raw, dict) else None),
        "stream": req.get("stream"),
        "n": req.get("n"),
        "logprobs": req.get("logprobs"),
        "top_logprobs": req.get("top_logprobs"),
        "temperature": req.get("temperature"),
        "max_tokens": _first(req, "max_completion_tokens", "max_tokens", "max_output_tokens"),
        "latency_ms": _first(obj, "latency_ms", "duration_ms"),
        "error": _str(error.get("message")) if isinstance(error, dict) else _str(error),
    })


# --------------------------------------------------------------------------------------------
# litellm: SpendLogs rows and StandardLoggingPayload
# --------------------------------------------------------------------------------------------


def _expand_litellm(obj: dict) -> dict:
    """One LiteLLM spend-log row or StandardLoggingPayload → one canonical record.

    Precedences (first non-empty wins; spend logs store "" for missing):
      request_id  request_id > id > litellm_call_id
      ts          startTime (SpendLogs: naive UTC datetime string; payload: epoch float)
      account_id  end_user (the request's ``user`` param) > user (SpendLogs: key owner) >
                  metadata.user_api_key_user_id > api_key (hashed) > metadata.user_api_key_hash
      org_id      organization_id > metadata.user_api_key_org_id > team_id >
                  metadata.user_api_key_team_id
      api_key_id  api_key (already a hash in SpendLogs) > metadata.user_api_key_hash
      ip          requester_ip_address > metadata.requester_ip_address
    """
    if isinstance(obj.get("standard_logging_object"), dict):
        obj = obj["standard_logging_object"]
    if "call_type" not in obj or _first(obj, "request_id", "id", "litellm_call_id") is None:
        raise ValueError("not a LiteLLM log row: needs call_type and request_id (spend logs) "
                         "or id (StandardLoggingPayload)")
    meta = _as_obj(obj.get("metadata"))
    meta = meta if isinstance(meta, dict) else {}
    proxy_req = _as_obj(obj.get("proxy_server_request"))
    proxy_req = proxy_req if isinstance(proxy_req, dict) else {}
    body = _as_obj(proxy_req.get("body"))
    body = body if isinstance(body, dict) else proxy_req
    params = _as_obj(obj.get("model_parameters"))
    params = params if isinstance(params, dict) else {}
    requester = meta.get("requester_metadata")
    requester = requester if isinstance(requester, dict) else {}
    headers = _headers(proxy_req.get("headers"), meta.get("headers"))

    # Spend logs keep "{}" when prompts are not stored: fall back to the proxied request body.
    raw_messages = _as_obj(obj.get("messages"))
    messages = _messages(raw_messages)
    prompt = raw_messages if isinstance(raw_messages, str) and raw_messages else None
    if not messages and not prompt:
        messages = _messages(body.get("messages"))
        prompt = None if messages else (_prompt_text(body.get("prompt"))
                                        or _prompt_text(body.get("input")))
    text, reasoning, finish = _choice_text(obj.get("response"))

    key_hash = _str(obj.get("api_key")) or _str(meta.get("user_api_key_hash"))
    tools = _as_obj(_first(params, "tools") or body.get("tools"))
    status = _first(obj, "status")
    if status is None and obj.get("error_str"):
        status = "failure"

    return _clean({
        "request_id": _str(_first(obj, "request_id", "id", "litellm_call_id")),
        "ts": _first(obj, "startTime", "start_time"),
        "account_id": _str(_first(obj, "end_user", "user"))
        or _str(meta.get("user_api_key_end_user_id")) or _str(meta.get("user_api_key_user_id"))
        or key_hash,
        "model": _str(_first(obj, "model", "model_group")) or _str(body.get("model")),
        "messages": messages or None,
        "prompt": prompt if not messages else None,
        "input_tokens": _int(obj.get("prompt_tokens")),
        "output_tokens": _int(obj.get("completion_tokens")),
        "response": text,
        "status": _str(status),
        "org_id": _str(_first(obj, "organization_id")) or _str(meta.get("user_api_key_org_id"))
        or _str(_first(obj, "team_id")) or _str(meta.get("user_api_key_team_id")),
        "api_key_id": _key_id(key_hash),
        "ip": _str(_first(obj, "requester_ip_address"))
        or _str(meta.get("requester_ip_address")) or _forwarded_ip(headers),
        "user_agent": _str(_first(meta, "user_agent")) or _str(requester.get("user_agent"))
        or _str(headers.get("user-agent")),
        "tools": tools if isinstance(tools, list) else None,
        "reasoning_effort": _str(_first(params, "reasoning_effort"))
        or _str(body.get("reasoning_effort")),
        # useful extras
        "call_type": _str(obj.get("call_type")),
        "team_id": _str(_first(obj, "team_id")) or _str(meta.get("user_api_key_team_id")),
        "key_alias": _str(meta.get("user_api_key_alias")),
        "model_group": _str(obj.get("model_group")),
        "spend": _first(obj, "spend", "response_cost"),
        "end_time": _first(obj, "endTime"),
        "session_id": _str(_first(obj, "session_id", "trace_id")),
        "request_tags": _as_obj(obj.get("request_tags")),
        "cache_hit": obj.get("cache_hit"),
        "reasoning_content": reasoning,
        "finish_reason": finish,
        "logprobs": _first(params, "logprobs") or body.get("logprobs"),
        "top_logprobs": _first(params, "top_logprobs") or body.get("top_logprobs"),
        "n": _first(params, "n") or body.get("n"),
        "error": _str(obj.get("error_str")),
    })


# --------------------------------------------------------------------------------------------
# otel: OTLP JSON traces with GenAI semantic-convention spans
# --------------------------------------------------------------------------------------------


def _any_value(value: Any) -> Any:
    """Decode an OTLP JSON ``AnyValue`` (camelCase or snake_case) to a Python value."""
    if not isinstance(value, dict):
        return value  # already-plain attribute maps (SDK ``to_json`` spans)
    for key in ("stringValue", "string_value"):
        if key in value:
            return value[key]
    for key in ("intValue", "int_value"):
        if key in value:
            return _int(value[key])
    for key in ("doubleValue", "double_value"):
        if key in value:
            return float(value[key])
    for key in ("boolValue", "bool_value"):
        if key in value:
            return bool(value[key])
    for key in ("bytesValue", "bytes_value"):
        if key in value:
            return value[key]
    for key in ("arrayValue", "array_value"):
        if key in value:
            return [_any_value(v) for v in (value[key] or {}).get("values", [])]
    for key in ("kvlistValue", "kvlist_value"):
        if key in value:
            return _attrs((value[key] or {}).get("values", []))
    return None  # empty AnyValue


def _attrs(raw: Any) -> dict[str, Any]:
    """OTLP ``[{key, value: AnyValue}]`` (or an already-plain dict) → ``{key: value}``."""
    if isinstance(raw, dict):
        return {str(k): _any_value(v) for k, v in raw.items()}
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise ValueError("OTLP attributes must be a list of {key, value}")
    out: dict[str, Any] = {}
    for kv in raw:
        if isinstance(kv, dict) and "key" in kv:
            out[str(kv["key"])] = _any_value(kv.get("value"))
    return out


def _iter_spans(obj: dict) -> Iterator[tuple[dict[str, Any], dict]]:
    """Yield (resource attributes, span) for every span of an OTLP export or a lone span."""
    if _looks_like_span(obj) and not any(k in obj for k in ("resourceSpans", "resource_spans")):
        resource = obj.get("resource")
        res_attrs = _attrs(resource.get("attributes")) if isinstance(resource, dict) else {}
        yield res_attrs, obj
        return
    resource_spans = _first(obj, "resourceSpans", "resource_spans")
    if resource_spans is None and any(
            k in obj for k in ("scopeSpans", "scope_spans", "instrumentationLibrarySpans")):
        resource_spans = [obj]  # a single ResourceSpans object
    if not isinstance(resource_spans, list):
        raise ValueError("not OTLP JSON traces: expected 'resourceSpans' (a list) or a span "
                         "object with traceId/spanId and attributes")
    for i, rs in enumerate(resource_spans):
        if not isinstance(rs, dict):
            raise ValueError(f"OTLP resourceSpans[{i}] is not an object")
        resource = rs.get("resource") if isinstance(rs.get("resource"), dict) else {}
        res_attrs = _attrs(resource.get("attributes"))
        scopes = _first(rs, "scopeSpans", "scope_spans", "instrumentationLibrarySpans") or []
        if not isinstance(scopes, list):
            raise ValueError(f"OTLP resourceSpans[{i}].scopeSpans is not a list")
        for scope in scopes:
            spans = scope.get("spans", []) if isinstance(scope, dict) else None
            if not isinstance(spans, list):
                raise ValueError(f"OTLP resourceSpans[{i}] has a scope whose spans is not a list")
            for span in spans:
                if not isinstance(span, dict):
                    raise ValueError(f"OTLP resourceSpans[{i}] has a span that is not an object")
                yield res_attrs, span


def _expand_otel(obj: dict) -> list[dict]:
    """An OTLP JSON export (or one span) → one canonical record per GenAI generation span.

    A span counts when ``gen_ai.operation.name`` is chat / text_completion / generate_content,
    or, absent an operation name, when it has ``gen_ai.request.model`` (older
    instrumentations). Spans with another operation (embeddings, execute_tool, invoke_agent...)
    are skipped: agent spans wrap the chat spans and would double-count requests.
    """
    records = []
    for res_attrs, span in _iter_spans(obj):
        attrs = _attrs(span.get("attributes"))
        op = attrs.get("gen_ai.operation.name")
        if op is not None:
            if op not in GENAI_GENERATION_OPS:
                continue
        elif "gen_ai.request.model" not in attrs:
            continue
        records.append(_otel_record(res_attrs, span, attrs))
    return records


def _otel_record(res_attrs: dict[str, Any], span: dict, attrs: dict[str, Any]) -> dict:
    """Map one GenAI span. Span attributes win over resource attributes of the same key.

    Precedences:
      request_id  gen_ai.response.id > traceId:spanId
      ts          startTimeUnixNano (→ epoch seconds) > start_time (SDK JSON, RFC 3339)
      account_id  account.id > account_id > user.id > enduser.id > user
      ip          client.address > http.client_ip > net.sock.peer.addr
      user_agent  user_agent.original > http.user_agent
    """
    both = {**res_attrs, **attrs}
    context = span.get("context") if isinstance(span.get("context"), dict) else {}
    trace_id = _str(_first(span, "traceId", "trace_id")) or _str(context.get("trace_id"))
    span_id = _str(_first(span, "spanId", "span_id")) or _str(context.get("span_id"))
    events = _otel_events(span.get("events"))

    nanos = _int(_first(span, "startTimeUnixNano", "start_time_unix_nano"))
    ts: Any = nanos / 1e9 if nanos is not None else _first(span, "start_time", "startTime")
    end_nanos = _int(_first(span, "endTimeUnixNano", "end_time_unix_nano"))

    messages, prompt = _otel_input(attrs, events)
    system = _otel_parts_text(_first_attr(attrs, events, "gen_ai.system_instructions"))
    response, finish = _otel_output(attrs, events)

    status_obj = span.get("status") if isinstance(span.get("status"), dict) else {}
    code = str(_first(status_obj, "code", "status_code") or "").upper()
    status = _str(attrs.get("error.type"))
    if status is None and code in ("2", "STATUS_CODE_ERROR", "ERROR"):
        status = "error"
    elif status is None and code in ("1", "STATUS_CODE_OK", "OK"):
        status = "ok"

    tools = _as_obj(_first_attr(attrs, events, "gen_ai.tool.definitions"))
    finish_attr = attrs.get("gen_ai.response.finish_reasons")
    return _clean({
        "request_id": _str(attrs.get("gen_ai.response.id"))
        or (f"{trace_id}:{span_id}" if trace_id and span_id else span_id),
        "ts": ts,
        "account_id": _str(_first(both, "account.id", "account_id", "user.id", "enduser.id",
                                  "user")),
        "model": _str(_first(attrs, "gen_ai.request.model", "gen_ai.response.model")),
        "messages": messages,
        "prompt": prompt if not messages else None,
        "system": system,
        "tools": tools if isinstance(tools, list) else None,
        "reasoning_effort": _str(_first(both, "gen_ai.request.reasoning_effort",
                                        "gen_ai.openai.request.reasoning_effort",
                                        "openai.request.reasoning_effort")),
        "input_tokens": _int(_first(attrs, "gen_ai.usage.input_tokens",
                                    "gen_ai.usage.prompt_tokens")),
        "output_tokens": _int(_first(attrs, "gen_ai.usage.output_tokens",
                                     "gen_ai.usage.completion_tokens")),
        "response": response,
        "status": status,
        "org_id": _str(_first(both, "org_id", "organization.id", "org.id")),
        "api_key_id": _str(_first(both, "api_key_id", "api_key.id")),
        "ip": _str(_first(both, "client.address", "http.client_ip", "net.sock.peer.addr")),
        "user_agent": _str(_first(both, "user_agent.original", "http.user_agent")),
        "country": _str(_first(both, "client.geo.country.iso_code", "geo.country.iso_code")),
        # useful extras
        "trace_id": trace_id,
        "span_id": span_id,
        "span_name": _str(span.get("name")),
        "operation": _str(attrs.get("gen_ai.operation.name")),
        "provider": _str(_first(both, "gen_ai.provider.name", "gen_ai.system")),
        "response_model": _str(attrs.get("gen_ai.response.model")),
        "conversation_id": _str(attrs.get("gen_ai.conversation.id")),
        "service_name": _str(res_attrs.get("service.name")),
        "finish_reason": finish or (_str(finish_attr[0]) if isinstance(finish_attr, list)
                                    and finish_attr else _str(finish_attr)),
        "n": attrs.get("gen_ai.request.choice.count"),
        "temperature": attrs.get("gen_ai.request.temperature"),
        "max_tokens": attrs.get("gen_ai.request.max_tokens"),
        "duration_s": (end_nanos - nanos) / 1e9 if nanos is not None and end_nanos else None,
    })


def _otel_events(raw: Any) -> list[tuple[str, dict[str, Any]]]:
    """Span events as (name, attributes); SDK JSON may carry an event ``body`` too."""
    out = []
    for ev in raw if isinstance(raw, list) else []:
        if isinstance(ev, dict):
            attrs = _attrs(ev.get("attributes"))
            if "body" in ev and "body" not in attrs:
                attrs["body"] = _any_value(ev["body"])
            out.append((str(ev.get("name", "")), attrs))
    return out


def _first_attr(attrs: dict[str, Any], events: Iterable[tuple[str, dict]], key: str) -> Any:
    """Attribute on the span, else on a ``gen_ai.client.inference.operation.details`` event
    (where the newest conventions record content)."""
    if attrs.get(key) is not None:
        return attrs[key]
    for _, ev_attrs in events:
        if ev_attrs.get(key) is not None:
            return ev_attrs[key]
    return None


def _loose_json(value: Any) -> Any:
    """JSON string, or a Python-repr list (the semconv example for ``gen_ai.prompt`` is
    ``[{'role': 'user', ...}]``); anything unparseable stays a string."""
    if not isinstance(value, str):
        return value
    parsed = _as_obj(value)
    if parsed is not value:
        return parsed
    text = value.strip()
    if text[:1] in ("[", "{") and len(text) <= _MAX_LITERAL_CHARS:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return value
    return value


def _otel_parts_text(value: Any) -> str | None:
    """``[{type: text, content}]`` parts (possibly JSON-encoded) or a string → text."""
    value = _loose_json(value)
    if value is None:
        return None
    text = _text(value)
    return text or None


def _indexed(attrs: dict[str, Any], prefix: str) -> list[dict]:
    """OpenLLMetry flattening: ``gen_ai.prompt.0.role`` / ``gen_ai.prompt.0.content`` → list."""
    found: dict[int, dict] = {}
    for key, value in attrs.items():
        if key.startswith(prefix + "."):
            idx, _, field = key[len(prefix) + 1:].partition(".")
            if idx.isdigit() and field in ("role", "content"):
                found.setdefault(int(idx), {})[field] = value
    return [found[i] for i in sorted(found)]


_EVENT_ROLES = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}


def _event_content(ev_attrs: dict[str, Any]) -> Any:
    """Content of a per-message event: ``content`` attr, ``gen_ai.event.content`` JSON or body."""
    raw = _first(ev_attrs, "content", "gen_ai.event.content", "body")
    raw = _loose_json(raw)
    if isinstance(raw, dict):
        if isinstance(raw.get("message"), dict):
            raw = raw["message"]
        return raw.get("content")
    return raw


def _otel_input(
    attrs: dict[str, Any], events: list[tuple[str, dict]],
) -> tuple[list | None, str | None]:
    """Prompt side, newest convention first: gen_ai.input.messages > gen_ai.prompt (JSON list
    or plain text) > OpenLLMetry gen_ai.prompt.N.* > per-message events."""
    current = _loose_json(_first_attr(attrs, events, "gen_ai.input.messages"))
    if isinstance(current, list):
        return _messages(current), None
    legacy = attrs.get("gen_ai.prompt")
    if legacy is None:
        for name, ev_attrs in events:
            if name == "gen_ai.content.prompt":
                legacy = ev_attrs.get("gen_ai.prompt")
                break
    if legacy is not None:
        parsed = _loose_json(legacy)
        if isinstance(parsed, list):
            return _messages(parsed), None
        return None, _text(parsed)
    indexed = _indexed(attrs, "gen_ai.prompt")
    if indexed:
        return _messages(indexed), None
    msgs = [{"role": ev_attrs.get("role") or role, "content": _text(_event_content(ev_attrs))}
            for name, ev_attrs in events if (role := _EVENT_ROLES.get(name))]
    return (msgs or None), None


def _otel_output(
    attrs: dict[str, Any], events: list[tuple[str, dict]],
) -> tuple[str | None, str | None]:
    """Completion side: gen_ai.output.messages > gen_ai.completion > gen_ai.completion.N.* >
    ``gen_ai.content.completion`` / ``gen_ai.choice`` events. Returns (text, finish_reason)."""
    current = _loose_json(_first_attr(attrs, events, "gen_ai.output.messages"))
    if isinstance(current, list) and current and isinstance(current[0], dict):
        first = current[0]
        return _text(first.get("parts", first.get("content"))), _str(first.get("finish_reason"))
    legacy = attrs.get("gen_ai.completion")
    if legacy is None:
        for name, ev_attrs in events:
            if name == "gen_ai.content.completion":
                legacy = ev_attrs.get("gen_ai.completion")
                break
    if legacy is not None:
        parsed = _loose_json(legacy)
        if isinstance(parsed, list) and parsed and isinstance(parsed[0], dict):
            return _text(parsed[0].get("content")), _str(parsed[0].get("finish_reason"))
        return _text(parsed), None
    indexed = _indexed(attrs, "gen_ai.completion")
    if indexed:
        return _text(indexed[0].get("content")), None
    for name, ev_attrs in events:
        if name == "gen_ai.choice":
            finish = _str(ev_attrs.get("finish_reason"))
            raw = _loose_json(_first(ev_attrs, "message", "gen_ai.event.content", "body"))
            if isinstance(raw, dict):
                finish = finish or _str(raw.get("finish_reason"))
                raw = raw.get("message", raw)
                raw = raw.get("content") if isinstance(raw, dict) else raw
            return _text(raw), finish
    return None, None
