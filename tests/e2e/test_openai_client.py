"""The official `openai` Python client against medgemmad, through the
loopback forwarder (tests/e2e/run.sh starts both and sets MEDGEMMA_BASE_URL).

Asserts the wire format, not what the small demo model says."""

import os

import openai
import pytest

BASE_URL = os.environ.get("MEDGEMMA_BASE_URL")

pytestmark = pytest.mark.skipif(not BASE_URL, reason="run through tests/e2e/run.sh")


@pytest.fixture(scope="module")
def client():
    # The appliance has no API keys: the Unix socket's permissions and the
    # loopback proxy decide who can connect. The client insists on a value.
    return openai.OpenAI(base_url=BASE_URL, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model_id(client):
    return client.models.list().data[0].id


def test_models_lists_the_one_model(client):
    models = client.models.list().data
    assert len(models) == 1
    assert models[0].id
    assert models[0].owned_by == "medgemmad"


def test_non_streaming_completion(client, model_id):
    r = client.chat.completions.create(
        model=model_id,
        messages=[
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        max_tokens=8,
        temperature=0,
    )
    assert r.object == "chat.completion"
    assert r.model == model_id
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 5
    assert 1 <= r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streaming_completion(client, model_id):
    stream = client.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks, "no chunks"
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    text = "".join(
        (c.choices[0].delta.content or "") + (getattr(c.choices[0].delta, "reasoning_content", None) or "")
        for c in chunks
        if c.choices
    )
    assert isinstance(text, str)
    usage = chunks[-1].usage
    assert usage is not None and 1 <= usage.completion_tokens <= 8


def test_multi_turn_is_accepted(client, model_id):
    r = client.chat.completions.create(
        model=model_id,
        messages=[
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Hello Ada."},
            {"role": "user", "content": "What is my name?"},
        ],
        max_tokens=4,
    )
    assert r.usage.prompt_tokens > 15


def test_errors_are_api_errors(client, model_id):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=model_id,
            messages=[{"role": "user", "content": "a"}],
            max_tokens=10**6,
        )
    assert e.value.status_code == 400
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=model_id,
            messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
            max_tokens=2,
        )
