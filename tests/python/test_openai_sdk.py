"""The official `openai` Python SDK, unchanged, against Tollgate."""

import base64
import hashlib
import json
import struct
import urllib.request

import openai
import pytest
from openai import OpenAI

from conftest import CLIENT_KEY, LIMITED_KEY


def client(gw, key=CLIENT_KEY):
    return OpenAI(base_url=gw["base_url"], api_key=key, max_retries=0)


def sha(text):
    return hashlib.sha256(text.encode()).hexdigest()


def test_chat(gateway):
    r = client(gateway).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "Hello SDK"}],
    )
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert sha("Hello SDK") in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens > 0


def test_chat_raw_headers(gateway):
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.parse().choices[0].message.content


def test_stream(gateway):
    stream = client(gateway).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Stream it"}], stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert sha("Stream it") in text
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


def test_stream_with_usage(gateway):
    chunks = list(
        client(gateway).chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "count"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.completion_tokens > 0


def test_stream_one_byte_at_a_time(gateway):
    msg = "split me [[mock:chunk_bytes=1,chunks=30]]"
    chunks = list(
        client(gateway).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": msg}], stream=True
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert sha(msg) in text
    assert len(chunks) >= 30


def test_tool_calls(gateway):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]
    c = client(gateway)
    r = c.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "weather? [[mock:tool_call=1]]"}], tools=tools
    )
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "Paris"}
    assert r.choices[0].finish_reason == "tool_calls"
    chunks = list(
        c.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "weather? [[mock:tool_call=1]]"}], tools=tools, stream=True
        )
    )
    args = "".join(
        tc.function.arguments or ""
        for ch in chunks if ch.choices and ch.choices[0].delta.tool_calls
        for tc in ch.choices[0].delta.tool_calls
    )
    assert json.loads(args) == {"location": "Paris"}


def test_embeddings_default_base64(gateway):
    c = client(gateway)
    r = c.embeddings.create(model="text-embedding-3-small", input=["one", "two"])
    assert len(r.data) == 2
    assert len(r.data[0].embedding) > 0
    f = c.embeddings.create(model="text-embedding-3-small", input=["one"], encoding_format="float")
    assert f.data[0].embedding == pytest.approx(r.data[0].embedding, rel=1e-6)


def test_models(gateway):
    ids = {m.id for m in client(gateway).models.list()}
    assert "gpt-4o-mini" in ids and "claude-test" in ids and "private-model" not in ids
    assert client(gateway).models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"


def test_error_classes(gateway):
    with pytest.raises(openai.AuthenticationError) as e:
        client(gateway, key="tg-wrong-key-123").chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    assert e.value.status_code == 401
    assert e.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.PermissionDeniedError):
        client(gateway).chat.completions.create(model="private-model", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError) as e:
        client(gateway).chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client(gateway).chat.completions.create(model="gpt-4o-mini", messages="not a list")
    assert e.value.body["param"] == "messages"
    lim = client(gateway, key=LIMITED_KEY)
    lim.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.RateLimitError) as e:
        lim.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert int(e.value.response.headers["retry-after"]) >= 1
    assert e.value.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_provider_error_passes_through(gateway):
    with pytest.raises(openai.InternalServerError) as e:
        client(gateway).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x [[mock:status=503]]"}]
        )
    assert e.value.status_code == 503


def test_metrics_and_health(gateway):
    client(gateway).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "m"}])
    text = urllib.request.urlopen(gateway["admin"] + "/metrics").read().decode()
    assert 'tollgate_requests_total{gen_ai_operation_name="chat",gen_ai_provider_name="mock",gen_ai_request_model="gpt-4o-mini",http_response_status_code="200"}' in text
    assert "gen_ai_server_time_to_first_token_seconds_bucket" in text
    assert json.loads(urllib.request.urlopen(gateway["admin"] + "/healthz").read()) == {"status": "ok"}
