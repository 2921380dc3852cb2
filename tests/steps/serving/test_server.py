"""`gptpipe serve`'s app on a live uvicorn server on loopback: the official OpenAI client for
models, completions and chat (plain and streamed), plain HTTP for the event stream's exact
format, /v1/classify and the errors; concurrent requests share decode passes and get the tokens
they get one at a time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from model.generate import generate
from steps.inference.classify import classify
from steps.inference.loading import LoadedModel, load
from steps.inference.streaming import encode
from steps.serving.app import Limits, chat_prompt, create_app
from steps.serving.openai_api import ChatMessage
from tests.steps.inference import tiny_models
from tests.steps.serving.conftest import live_server

openai = pytest.importorskip("openai", reason="the serving tests need the openai client (pip install -e '.[test]')")

MAX_TOKENS = 40
LIMITS = Limits(max_prompt_tokens=200, max_tokens=MAX_TOKENS, max_batch=8, max_texts=4)
PROMPTS = ["Win a free prize", "ok see you", "Are we still meeting for lunch tomorrow?", "Café", "URGENT! Your"]


def sharpened(loaded: LoadedModel) -> LoadedModel:
    """Scale the output layer so greedy choices are far apart: an untrained model's near-ties
    could otherwise flip between batch shapes (float sums in another order)."""
    with torch.no_grad():
        loaded.model.out_head.weight.mul_(30.0)
    return loaded


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, LoadedModel]:
    root = tmp_path_factory.mktemp("models")
    tok = tiny_models.tokenizer()
    return {
        "pretrain": sharpened(load(tiny_models.lm_folder(root, tok))),
        "instruct": sharpened(load(tiny_models.instruct_folder(root, tok, context_length=256))),
        "classifier": load(tiny_models.classifier_folder(root, tok)),
    }


@pytest.fixture(scope="module")
def base_url(models) -> Iterator[str]:
    with live_server(create_app(list(models.values()), LIMITS)) as url:
        yield url


@pytest.fixture
def client(base_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def alone(loaded: LoadedModel, prompt: list[int], max_tokens: int) -> tuple[str, str]:
    """(text, finish reason) of greedy generation for this prompt alone, in process."""
    out = generate(loaded.model, torch.tensor([prompt]), max_tokens, loaded.context_length,
                   eos_id=loaded.eot_id)[0, len(prompt):].tolist()
    if loaded.eot_id in out:
        return tiny_models.continuation(loaded.tokenizer, prompt, out[: out.index(loaded.eot_id)]), "stop"
    return tiny_models.continuation(loaded.tokenizer, prompt, out), "length"


def test_models_are_listed_with_their_kind(client) -> None:
    listed = {m.id: m for m in client.models.list()}
    assert set(listed) == {"pretrain", "instruct", "classifier"}
    assert listed["classifier"].model_extra["kind"] == "classifier"
    assert listed["classifier"].model_extra["labels"] == tiny_models.LABELS


def test_completion_is_the_in_process_greedy_text(client, models) -> None:
    loaded = models["pretrain"]
    prompt = PROMPTS[0]
    reply = client.completions.create(model="pretrain", prompt=prompt, max_tokens=12, temperature=0)
    text, finish = alone(loaded, encode(loaded, prompt), 12)
    assert reply.choices[0].text == text and reply.choices[0].finish_reason == finish
    assert reply.object == "text_completion" and reply.model == "pretrain"
    assert reply.usage.prompt_tokens == len(encode(loaded, prompt))
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streamed_completion_adds_up_to_the_plain_one(client) -> None:
    plain = client.completions.create(model="pretrain", prompt=PROMPTS[2], max_tokens=15, temperature=0)
    chunks = list(client.completions.create(model="pretrain", prompt=PROMPTS[2], max_tokens=15, temperature=0,
                                            stream=True))
    assert len(chunks) > 2  # streamed piece by piece, not in one go
    assert "".join(c.choices[0].text for c in chunks) == plain.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks][-1] == plain.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_chat_replies_in_the_trained_prompt_style_plain_and_streamed(client, models) -> None:
    loaded = models["instruct"]
    messages = [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Say hello again."}]
    reply = client.chat.completions.create(model="instruct", messages=messages, max_tokens=10, temperature=0)
    prompt = chat_prompt(loaded, [ChatMessage(**m) for m in messages])
    text, finish = alone(loaded, prompt, 10)
    assert reply.choices[0].message.role == "assistant"
    assert (reply.choices[0].message.content, reply.choices[0].finish_reason) == (text, finish)
    assert reply.usage.prompt_tokens == len(prompt)

    chunks = list(client.chat.completions.create(model="instruct", messages=messages, max_tokens=10,
                                                 temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == finish and chunks[-1].object == "chat.completion.chunk"


def test_the_history_layout_is_the_one_chat_training_used(models) -> None:
    loaded = models["instruct"]
    from steps.tasks.instruction import format_prompt

    def prompt_of(text: str) -> list[int]:
        return encode(loaded, format_prompt({"instruction": text, "input": ""}, "alpaca"))

    messages = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi"),
                ChatMessage(role="assistant", content="Hello"), ChatMessage(role="user", content="Bye")]
    assert chat_prompt(loaded, messages) == (prompt_of("Be brief.\n\nHi") + encode(loaded, "Hello") + [loaded.eot_id]
                                             + prompt_of("Bye"))


def test_the_event_stream_is_framed_as_openai_frames_it(base_url) -> None:
    body = {"model": "instruct", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 6,
            "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: ") and "\n" not in e for e in events[:-1])
    first = json.loads(events[0].removeprefix("data: "))
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    last = json.loads(events[-3].removeprefix("data: "))
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] in ("stop", "length")


def test_a_stop_string_cuts_the_text(client) -> None:
    full = client.completions.create(model="pretrain", prompt=PROMPTS[1], max_tokens=20, temperature=0).choices[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert stop.strip(), f"the greedy text has no usable stop string: {full!r}"
    for stream in (False, True):
        out = client.completions.create(model="pretrain", prompt=PROMPTS[1], max_tokens=20, temperature=0,
                                        stop=[stop], stream=stream)
        chunks = list(out) if stream else [out]
        assert "".join(c.choices[0].text for c in chunks) == full[: full.index(stop)]
        assert chunks[-1].choices[0].finish_reason == "stop"


def test_seeded_sampling_repeats(client) -> None:
    def sample(seed: int) -> str:
        return client.completions.create(model="pretrain", prompt=PROMPTS[0], max_tokens=12, temperature=1.5,
                                         seed=seed, extra_body={"top_k": 50}).choices[0].text

    assert sample(3) == sample(3)


def test_classify_gives_labels_and_probabilities(base_url, models) -> None:
    texts = tiny_models.TEXTS[:3]
    response = httpx.post(f"{base_url}/v1/classify", json={"model": "classifier", "input": texts}, timeout=60)
    assert response.status_code == 200
    data = response.json()["data"]
    expected = classify(models["classifier"], texts)
    assert [(d["label"], d["probabilities"]) for d in data] == [(label, pytest.approx(p)) for label, p in expected]
    assert all(set(d["probabilities"]) == set(tiny_models.LABELS) for d in data)
    one = httpx.post(f"{base_url}/v1/classify", json={"model": "classifier", "input": texts[0]}, timeout=60)
    assert one.json()["data"][0]["label"] == expected[0][0]


def test_concurrent_requests_share_passes_and_keep_their_greedy_tokens(base_url, client, models) -> None:
    loaded = models["pretrain"]
    before = httpx.get(f"{base_url}/stats").json()["models"]["pretrain"]["decode_batch_sizes"]

    def ask(prompt: str) -> tuple[str, str]:
        c = client.completions.create(model="pretrain", prompt=prompt, max_tokens=MAX_TOKENS, temperature=0).choices[0]
        return c.text, c.finish_reason

    with ThreadPoolExecutor(len(PROMPTS) * 2) as pool:
        together = list(pool.map(ask, PROMPTS * 2))
    assert together == [alone(loaded, encode(loaded, p), MAX_TOKENS) for p in PROMPTS * 2]
    after = httpx.get(f"{base_url}/stats").json()["models"]["pretrain"]["decode_batch_sizes"]
    shared = {int(size): n - before.get(size, 0) for size, n in after.items() if int(size) > 1}
    assert sum(shared.values()) > 0, f"no decode pass had more than one sequence: {after}"


# --- errors ------------------------------------------------------------------------------------


def error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


def post(base_url: str, path: str, body: dict | str) -> httpx.Response:
    if isinstance(body, str):
        return httpx.post(f"{base_url}{path}", content=body, headers={"Content-Type": "application/json"}, timeout=60)
    return httpx.post(f"{base_url}{path}", json=body, timeout=60)


def test_bad_requests_get_openai_shaped_4xx_errors(base_url) -> None:
    chat = "/v1/chat/completions"
    err = error(post(base_url, chat, {"model": "instruct"}), 400)
    assert err["param"] == "messages" and "required" in err["message"]
    err = error(post(base_url, chat, {"model": "instruct", "messages": []}), 400)
    assert err["param"] == "messages"
    err = error(post(base_url, chat, {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}), 404)
    assert err["code"] == "model_not_found" and "pretrain" in err["message"]
    err = error(post(base_url, chat, {"model": "instruct", "messages": [{"role": "assistant", "content": "hi"}]}), 400)
    assert "must follow a user message" in err["message"]
    err = error(post(base_url, "/v1/completions", {"model": "pretrain", "prompt": "hello " * 120}), 400)
    assert err["code"] == "context_length_exceeded" and "at most 96" in err["message"]  # the context
    long_chat = {"model": "instruct", "messages": [{"role": "user", "content": "Say hello. " * 80}]}
    err = error(post(base_url, chat, long_chat), 400)
    assert err["param"] == "messages" and "at most 200" in err["message"]  # the server's limit
    err = error(post(base_url, "/v1/completions", {"model": "pretrain", "prompt": "hi", "max_tokens": MAX_TOKENS + 1}), 400)
    assert err["param"] == "max_tokens" and "--max-tokens" in err["message"]
    err = error(post(base_url, "/v1/completions", {"model": "pretrain", "prompt": "Win " * 30, "max_tokens": 40}), 400)
    assert err["code"] == "context_length_exceeded" and "maximum context length is 96" in err["message"]
    err = error(post(base_url, "/v1/completions", '{"model": "pretrain", "prompt": '), 400)
    assert err["code"] == "invalid_json"
    err = error(post(base_url, "/v1/completions", {"model": "pretrain", "prompt": "hi", "temperature": -1}), 400)
    assert err["param"] == "temperature"
    err = error(post(base_url, "/v1/completions", {"model": "pretrain", "prompt": "hi", "n": 2}), 400)
    assert err["param"] == "n"
    err = error(post(base_url, "/v1/completions", {"model": "classifier", "prompt": "hi"}), 400)
    assert err["code"] == "wrong_model_kind"
    err = error(post(base_url, "/v1/classify", {"model": "pretrain", "input": ["hi"]}), 400)
    assert err["code"] == "wrong_model_kind"
    err = error(post(base_url, "/v1/classify", {"model": "classifier", "input": ["hi"] * 5}), 400)
    assert "1 to 4 texts" in err["message"]
    error(httpx.get(f"{base_url}/v1/nothing-here"), 404)
    # Still serving after all that.
    assert httpx.get(f"{base_url}/v1/models").status_code == 200


def test_the_openai_client_raises_its_own_errors_for_them(client) -> None:
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="nope", prompt="hi")
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="instruct", messages=[{"role": "user", "content": "hi"}], max_tokens=999)
    assert info.value.body["param"] == "max_tokens"
