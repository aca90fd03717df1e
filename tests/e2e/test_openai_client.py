"""The official `openai` Python client against medgemmad, through the
loopback forwarder (tests/e2e/run.sh starts both with accounts on and sets
MEDGEMMA_BASE_URL, MEDGEMMA_API_TOKEN: a personal token `medgemmactl user
token create` made for the account e2e-clinician).

Asserts the wire format, not what the small demo model says."""

import glob
import json
import os
import subprocess

import openai
import pytest

BASE_URL = os.environ.get("MEDGEMMA_BASE_URL")
TOKEN = os.environ.get("MEDGEMMA_API_TOKEN", "")
CTL = os.environ.get("MEDGEMMACTL")
CONFIG = os.environ.get("MEDGEMMA_CONFIG")
E2E_DIR = os.environ.get("MEDGEMMA_E2E_DIR")

pytestmark = pytest.mark.skipif(not BASE_URL, reason="run through tests/e2e/run.sh")


@pytest.fixture(scope="module")
def client():
    # The personal token goes as Authorization: Bearer, as for any OpenAI server.
    return openai.OpenAI(base_url=BASE_URL, api_key=TOKEN, max_retries=0, timeout=120)


def ctl(*args):
    out = subprocess.run([CTL, "--config", CONFIG, "--json", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def audit_records():
    records = []
    for path in sorted(glob.glob(os.path.join(E2E_DIR, "state", "audit", "audit-*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            records += [json.loads(line) for line in f if line.strip()]
    return records


@pytest.fixture(scope="module")
def model_id(client):
    return client.models.list().data[0].id


def test_a_request_without_a_valid_token_is_refused():
    assert TOKEN.startswith("mgd_tok-"), "run.sh made a token"
    for key in ("", "sk-not-ours", TOKEN[:-4] + "0000"):
        c = openai.OpenAI(base_url=BASE_URL, api_key=key or "x", max_retries=0, timeout=30)
        with pytest.raises(openai.AuthenticationError) as e:
            c.models.list()
        assert e.value.status_code == 401
        assert e.value.body["code"] == "invalid_token"


def test_token_use_is_audited_with_the_accounts_pseudonym_never_the_token(client):
    client.models.list()
    account = next(a for a in ctl("user", "list")["accounts"] if a["name"] == "e2e-clinician")
    records = audit_records()
    uses = [r for r in records if r["event"] == "token_use"]
    assert uses and uses[-1]["actor"] == account["id"], uses[-1:]
    assert uses[-1]["token"] == TOKEN.split("_")[1]
    secret = TOKEN.rsplit("_", 1)[1]
    for path in glob.glob(os.path.join(E2E_DIR, "**", "*"), recursive=True):
        if os.path.isfile(path) and not path.endswith(".sock"):
            with open(path, "rb") as f:
                assert secret.encode() not in f.read(), f"the token's secret is in {path}"


def test_a_revoked_token_stops_working_at_once(client):
    made = ctl("user", "token", "create", "e2e-clinician", "--label", "short-lived")
    short = openai.OpenAI(base_url=BASE_URL, api_key=made["token"], max_retries=0, timeout=30)
    assert short.models.list().data
    ctl("user", "token", "revoke", "e2e-clinician", made["id"])
    with pytest.raises(openai.AuthenticationError):
        short.models.list()
    # The other token still works.
    assert client.models.list().data


def test_terms_come_back_in_the_extension_field(client, model_id):
    r = client.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": "Is crushing chest pain a heart attack?"}],
        max_tokens=4,
    )
    terms = r.choices[0].message.model_extra.get("terms")
    assert terms and terms[0]["phrase"] == "heart attack", terms
    assert {"preferred", "code", "system"} <= set(terms[0]), terms
    assert any(t["code"] == "I21.9" for t in terms), terms


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
