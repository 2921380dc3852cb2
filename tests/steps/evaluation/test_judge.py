"""Tests for the LLM judge (steps/evaluation/judge.py), against a fake OpenAI-compatible server on loopback."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from typing import Any

import pytest

from steps.config import JudgeConfig
from steps.evaluation.judge import (
    RETRIES,
    JudgeOutcome,
    JudgeResult,
    JudgeUnavailable,
    judge_instruct,
    judge_prompt,
    judged_records,
    parse_score,
    score_responses,
)
from tests.conftest import QuietHandler, free_port
from tests.params import merged

WITH_INPUT = {
    "instruction": "Rewrite the sentence using a simile.",
    "input": "The car is very fast.",
    "output": "The car is as fast as lightning.",
    "model_response": "The car is as fast as a bullet.",
}
WITHOUT_INPUT = {
    "instruction": "What type of cloud is typically associated with thunderstorms?",
    "input": "",
    "output": "The type of cloud typically associated with thunderstorms is cumulonimbus.",
    "model_response": "The type of cloud associated with thunderstorms is a cumulus cloud.",
}
PREAMBLE = ("Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request.")


# ---------------------------------------------------------------------------
# A fake OpenAI-compatible chat server on loopback
# ---------------------------------------------------------------------------


def judge_config(**fields: Any) -> JudgeConfig:
    """The shipped params.yaml's evaluate.judge with `fields` changed."""
    return JudgeConfig.model_validate(merged(fields, "evaluate.judge"))


@dataclass
class Reply:
    content: str | None = "50"
    status: int = 200
    delay_s: float = 0.0
    raw: bytes | None = None  # sent as the body instead of a chat completion


class FakeChat:
    """Serves `POST /v1/chat/completions`: queued `replies` first, then `default`; records requests."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.default = Reply()
        self.requests: list[dict] = []
        # Set at teardown so that a handler sleeping past the client's timeout stops at once.
        self.release = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def config(self, **kwargs: Any) -> JudgeConfig:
        return judge_config(enabled=True, endpoint=self.endpoint, model="judge-model", **kwargs)

    def bodies(self) -> list[dict]:
        return [r["body"] for r in self.requests]


def _completion(content: str | None) -> bytes:
    return json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "model": "judge-model",
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": content}}]}).encode()


def _handler(server: FakeChat) -> type[QuietHandler]:
    class Handler(QuietHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
            if self.path != "/v1/chat/completions":
                reply = Reply(status=404, raw=b'{"error": "404 page not found"}')
            else:
                reply = server.replies.pop(0) if server.replies else server.default
            if reply.delay_s and server.release.wait(reply.delay_s):
                return
            payload = reply.raw if reply.raw is not None else _completion(reply.content)
            self.reply(reply.status, payload, {"Content-Type": "application/json"})

    return Handler


@pytest.fixture
def chat(loopback) -> FakeChat:
    srv = FakeChat()
    loopback.start(srv.httpd, on_stop=srv.release.set)
    return srv


def score(records: list[dict], cfg: JudgeConfig) -> JudgeResult:
    return score_responses(records, cfg, seed=123, retry_delay_s=0.0)


# ---------------------------------------------------------------------------
# The prompt and the request
# ---------------------------------------------------------------------------


def test_prompt_is_the_books_with_the_alpaca_input() -> None:
    assert judge_prompt(WITH_INPUT) == (
        f"Given the input `{PREAMBLE}\n\n### Instruction:\nRewrite the sentence using a simile."
        "\n\n### Input:\nThe car is very fast.` and correct output `The car is as fast as lightning.`, "
        "score the model response `The car is as fast as a bullet.` on a scale from 0 to 100, "
        "where 100 is the best score. Respond with the integer number only."
    )


def test_prompt_without_input_has_no_input_section() -> None:
    assert judge_prompt(WITHOUT_INPUT) == (
        f"Given the input `{PREAMBLE}\n\n### Instruction:\nWhat type of cloud is typically associated with "
        "thunderstorms?` and correct output `The type of cloud typically associated with thunderstorms is "
        "cumulonimbus.`, score the model response `The type of cloud associated with thunderstorms is a "
        "cumulus cloud.` on a scale from 0 to 100, where 100 is the best score. "
        "Respond with the integer number only."
    )


def test_request_is_a_greedy_seeded_chat_completion(chat: FakeChat) -> None:
    score([WITH_INPUT, WITHOUT_INPUT], chat.config())
    assert [r["path"] for r in chat.requests] == ["/v1/chat/completions"] * 2
    assert chat.bodies() == [
        {"model": "judge-model", "messages": [{"role": "user", "content": judge_prompt(rec)}],
         "temperature": 0, "seed": 123}
        for rec in (WITH_INPUT, WITHOUT_INPUT)
    ]
    assert "Authorization" not in chat.requests[0]["headers"]


def test_trailing_slash_in_the_endpoint(chat: FakeChat) -> None:
    cfg = judge_config(endpoint=chat.endpoint + "/", model="m")
    assert score([WITH_INPUT], cfg).scores == [50]
    assert chat.requests[0]["path"] == "/v1/chat/completions"


# ---------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("85", 85),
        ("  42\n", 42),
        ("Score: 70.", 70),
        ("I'd give it 90/100", 90),
        ("0", 0),
        ("100", 100),
        ("150? No: 95", 95),  # the first integer within 0-100
        ("no idea", None),
        ("", None),
        ("-5", None),
        ("8.5", None),
    ],
)
def test_parse_score(reply: str, expected: int | None) -> None:
    assert parse_score(reply) == expected


def test_scores_mean_and_unscored(chat: FakeChat) -> None:
    chat.replies = [Reply("85"), Reply("Score: 70."), Reply("I'd give it 90/100"), Reply("no idea"), Reply(None)]
    result = score([WITH_INPUT, WITHOUT_INPUT] * 2 + [WITH_INPUT], chat.config())
    assert result.scores == [85, 70, 90, None, None]
    assert (result.scored, result.unscored) == (3, 2)
    assert result.mean_score == pytest.approx(245 / 3)
    assert result.metrics("instruct") == {"instruct_judge_scored": 3, "instruct_judge_unscored": 2,
                                          "instruct_judge_score": pytest.approx(245 / 3)}


def test_nothing_scored_leaves_the_mean_out() -> None:
    result = JudgeResult([None, None])
    assert result.mean_score is None
    assert result.metrics("instruct") == {"instruct_judge_scored": 0, "instruct_judge_unscored": 2}


def test_max_records_bounds_the_requests(chat: FakeChat) -> None:
    result = score([WITH_INPUT, WITHOUT_INPUT, WITH_INPUT], chat.config(max_records=2))
    assert result.scores == [50, 50]
    assert len(chat.requests) == 2


def test_api_key_comes_from_the_named_variable(chat: FakeChat, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPTPIPE_TEST_JUDGE_KEY", "sk-test-123")
    score([WITH_INPUT], chat.config(api_key_env="GPTPIPE_TEST_JUDGE_KEY"))
    assert chat.requests[0]["headers"]["Authorization"] == "Bearer sk-test-123"


def test_missing_api_key_fails_before_any_request(chat: FakeChat, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPTPIPE_TEST_JUDGE_KEY", raising=False)
    with pytest.raises(JudgeUnavailable, match="GPTPIPE_TEST_JUDGE_KEY.*unset"):
        score([WITH_INPUT], chat.config(api_key_env="GPTPIPE_TEST_JUDGE_KEY"))
    assert chat.requests == []


def test_a_server_error_is_retried(chat: FakeChat) -> None:
    chat.replies = [Reply(status=500, raw=b"busy"), Reply(status=503, raw=b""), Reply("77")]
    assert score([WITH_INPUT, WITHOUT_INPUT], chat.config()).scores == [77, 50]
    assert len(chat.requests) == 4


# ---------------------------------------------------------------------------
# An unreachable judge: one clear error, and no further requests
# ---------------------------------------------------------------------------


def _says_where_and_how(err: pytest.ExceptionInfo[JudgeUnavailable], endpoint: str) -> str:
    message = str(err.value)
    assert endpoint in message and "'judge-model'" in message
    assert "evaluate.judge.enabled: false" in message
    return message


def test_connection_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    endpoint = f"http://127.0.0.1:{free_port()}/v1"
    cfg = judge_config(enabled=True, endpoint=endpoint, model="judge-model")
    with pytest.raises(JudgeUnavailable) as err:
        score([WITH_INPUT, WITHOUT_INPUT], cfg)
    message = _says_where_and_how(err, endpoint)
    assert "cannot connect" in message and "refused" in message.lower()
    assert "`ollama serve`" in message and "`ollama pull judge-model`" in message


def test_timeout_stops_at_the_first_record(chat: FakeChat) -> None:
    chat.default = Reply("50", delay_s=5.0)
    with pytest.raises(JudgeUnavailable) as err:
        score([WITH_INPUT, WITHOUT_INPUT, WITH_INPUT], chat.config(timeout_s=0.2))
    message = _says_where_and_how(err, chat.endpoint)
    assert "no reply within 0.2 s" in message and "evaluate.judge.timeout_s" in message
    assert len(chat.requests) == 1


def test_repeated_server_errors(chat: FakeChat) -> None:
    chat.default = Reply(status=500, raw=b"out of memory")
    with pytest.raises(JudgeUnavailable) as err:
        score([WITH_INPUT, WITHOUT_INPUT], chat.config())
    message = _says_where_and_how(err, chat.endpoint)
    assert f"HTTP 500 Internal Server Error after {RETRIES + 1} tries: out of memory" in message
    assert len(chat.requests) == RETRIES + 1  # the second record is never sent


def test_unknown_model_404_shows_the_servers_reason(chat: FakeChat) -> None:
    chat.default = Reply(status=404, raw=b'{"error": {"message": "model \\"judge-model\\" not found"}}')
    with pytest.raises(JudgeUnavailable) as err:
        score([WITH_INPUT, WITHOUT_INPUT], chat.config())
    message = _says_where_and_how(err, chat.endpoint)
    assert "HTTP 404" in message and 'not found' in message and "`ollama pull judge-model`" in message
    assert len(chat.requests) == 1


def test_wrong_endpoint_path_404(chat: FakeChat) -> None:
    endpoint = chat.endpoint.removesuffix("/v1")  # Ollama's native root, not its OpenAI API
    cfg = judge_config(enabled=True, endpoint=endpoint, model="judge-model")
    with pytest.raises(JudgeUnavailable) as err:
        score([WITH_INPUT], cfg)
    assert "evaluate.judge.endpoint" in _says_where_and_how(err, endpoint)
    assert chat.requests[0]["path"] == "/chat/completions"


def test_401_points_at_the_key_variable(chat: FakeChat, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPTPIPE_TEST_JUDGE_KEY", "wrong")
    chat.default = Reply(status=401, raw=b"")
    with pytest.raises(JudgeUnavailable) as err:
        score([WITH_INPUT], chat.config(api_key_env="GPTPIPE_TEST_JUDGE_KEY"))
    message = _says_where_and_how(err, chat.endpoint)
    assert "HTTP 401" in message and "$GPTPIPE_TEST_JUDGE_KEY" in message and "wrong" not in message


def test_a_reply_that_is_not_a_chat_completion(chat: FakeChat) -> None:
    chat.default = Reply(raw=b"<html>hello</html>")
    with pytest.raises(JudgeUnavailable, match="not an OpenAI-style chat completion"):
        score([WITH_INPUT], chat.config())


# ---------------------------------------------------------------------------
# What the evaluate stage reports
# ---------------------------------------------------------------------------


def _baseline() -> list[dict]:
    return [{**r, "model_response": "the the the"} for r in (WITH_INPUT, WITHOUT_INPUT)]


def test_judge_instruct_scores_finetuned_and_pretrained_only(chat: FakeChat) -> None:
    chat.replies = [Reply("80"), Reply("60"), Reply("10"), Reply("no idea")]
    outcome = judge_instruct([WITH_INPUT, WITHOUT_INPUT], _baseline(), chat.config(), seed=123, retry_delay_s=0.0)
    assert outcome.metrics == {
        "instruct_judge_available": 1,
        "instruct_judge_score": 70.0, "instruct_judge_scored": 2, "instruct_judge_unscored": 0,
        "instruct_start_judge_score": 10.0, "instruct_start_judge_scored": 1, "instruct_start_judge_unscored": 1,
    }
    assert [b["messages"][0]["content"] for b in chat.bodies()[2:]] == [judge_prompt(r) for r in _baseline()]


def test_an_unreachable_judge_becomes_a_warning_and_a_metric(caplog: pytest.LogCaptureFixture) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}/v1"
    cfg = judge_config(enabled=True, endpoint=endpoint, model="judge-model")
    with caplog.at_level(logging.WARNING, logger="gptpipe.judge"):
        outcome = judge_instruct([WITH_INPUT], _baseline(), cfg, seed=123, retry_delay_s=0.0)
    assert outcome.metrics == {"instruct_judge_available": 0}
    assert outcome.finetuned is None and outcome.start is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "every other metric is still reported" in warnings[0].getMessage()
    assert endpoint in warnings[0].getMessage() and "ollama serve" in warnings[0].getMessage()
    assert outcome.problem is not None and endpoint in outcome.problem


def test_judge_failing_on_the_baseline_reports_no_half_comparison(chat: FakeChat) -> None:
    chat.replies = [Reply("80"), Reply("60")]
    chat.default = Reply(status=404, raw=b"")
    outcome = judge_instruct([WITH_INPUT, WITHOUT_INPUT], _baseline(), chat.config(), seed=123, retry_delay_s=0.0)
    assert outcome.metrics == {"instruct_judge_available": 0}
    assert len(chat.requests) == 3


def test_judged_records_pair_the_responses_and_pad_unjudged_ones() -> None:
    outcome = JudgeOutcome({"instruct_judge_available": 1}, JudgeResult([80]), JudgeResult([None]))
    rows = judged_records([WITH_INPUT, WITHOUT_INPUT], _baseline(), outcome)
    assert rows[0] == {**WITH_INPUT, "judge_score": 80, "pretrained_only_response": "the the the",
                       "pretrained_only_judge_score": None}
    assert rows[1]["judge_score"] is None and rows[1]["model_response"] == WITHOUT_INPUT["model_response"]
    assert all(r["judge_score"] is None for r in judged_records([WITH_INPUT], _baseline(), None))
