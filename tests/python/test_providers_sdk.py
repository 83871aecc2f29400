"""The same official `openai` SDK calls, served by each provider's mock through
Tollgate's translation: the results must have the same shape whoever serves them."""

import hashlib
import json

import openai
import pytest
from openai import OpenAI

from conftest import CLIENT_KEY

MODELS = ["gpt-4o-mini", "claude-test", "gemini-test", "azure-test"]
TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}]


def client(gw):
    return OpenAI(base_url=gw["base_url"], api_key=CLIENT_KEY, max_retries=0)


def sha(text):
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize("model", MODELS)
def test_chat_same_shape(gateway, model):
    r = client(gateway).chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello provider"}],
        max_tokens=200,
    )
    assert r.object == "chat.completion"
    assert r.id
    m = r.choices[0].message
    assert m.role == "assistant"
    assert sha("Hello provider") in m.content
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


@pytest.mark.parametrize("model", MODELS)
def test_stream_same_shape(gateway, model):
    chunks = list(client(gateway).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Stream provider"}], max_tokens=200,
        stream=True, stream_options={"include_usage": True},
    ))
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert sha("Stream provider") in text
    assert [c.choices[0].finish_reason for c in with_choices if c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert len({c.id for c in chunks}) == 1


@pytest.mark.parametrize("model", MODELS)
def test_stream_without_usage_has_none(gateway, model):
    chunks = list(client(gateway).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "no usage"}], max_tokens=50, stream=True,
    ))
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices and chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("model", MODELS)
def test_tool_calls_same_shape(gateway, model):
    c = client(gateway)
    msgs = [{"role": "user", "content": "Weather in Paris? [[mock:tool_call=1]]"}]
    r = c.chat.completions.create(model=model, messages=msgs, tools=TOOLS, max_tokens=100)
    assert r.choices[0].finish_reason == "tool_calls"
    call = r.choices[0].message.tool_calls[0]
    assert call.id and call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "Paris"}

    chunks = list(c.chat.completions.create(model=model, messages=msgs, tools=TOOLS, max_tokens=100, stream=True))
    deltas = [tc for ch in chunks if ch.choices and ch.choices[0].delta.tool_calls for tc in ch.choices[0].delta.tool_calls]
    assert deltas[0].index == 0 and deltas[0].id and deltas[0].function.name == "get_weather"
    args = "".join(d.function.arguments or "" for d in deltas)
    assert json.loads(args) == {"location": "Paris"}
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == ["tool_calls"]

    # The tool result goes back and the conversation continues.
    follow = msgs + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"},
        {"role": "user", "content": "Thanks"},
    ]
    r = c.chat.completions.create(model=model, messages=follow, tools=TOOLS, max_tokens=100)
    assert sha("Thanks") in r.choices[0].message.content


@pytest.mark.parametrize("model", ["claude-test", "gemini-test", "azure-test"])
def test_provider_errors_mapped(gateway, model):
    with pytest.raises(openai.RateLimitError) as e:
        client(gateway).chat.completions.create(
            model=model, messages=[{"role": "user", "content": "x [[mock:status=429]]"}], max_tokens=10)
    assert e.value.body["message"]
    with pytest.raises(openai.InternalServerError):
        client(gateway).chat.completions.create(
            model=model, messages=[{"role": "user", "content": "x [[mock:status=500]]"}], max_tokens=10)


def test_anthropic_overloaded_is_503(gateway):
    with pytest.raises(openai.InternalServerError) as e:
        client(gateway).chat.completions.create(
            model="claude-test", messages=[{"role": "user", "content": "x [[mock:status=529]]"}], max_tokens=10)
    assert e.value.status_code == 503


def test_unsupported_parameter_is_a_clear_400(gateway):
    with pytest.raises(openai.BadRequestError) as e:
        client(gateway).chat.completions.create(
            model="claude-test", messages=[{"role": "user", "content": "x"}], n=2)
    assert e.value.body["param"] == "n"


@pytest.mark.parametrize("model", ["azure-embed", "gemini-embed"])
def test_embeddings(gateway, model):
    c = client(gateway)
    r = c.embeddings.create(model=model, input=["alpha", "beta"])
    assert [d.index for d in r.data] == [0, 1]
    f = c.embeddings.create(model=model, input=["alpha"], encoding_format="float")
    assert f.data[0].embedding == pytest.approx(r.data[0].embedding, rel=1e-6)


def test_anthropic_has_no_embeddings(gateway):
    with pytest.raises(openai.BadRequestError):
        client(gateway).embeddings.create(model="claude-test", input="x")
