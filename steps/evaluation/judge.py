"""LLM-as-judge: score instruction responses 0-100 with the book's chapter 7 prompt, through any
OpenAI-compatible chat endpoint (Ollama's `/v1` included)."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import requests
from tqdm.auto import tqdm

from steps.config import JudgeConfig
from steps.tasks.instruction import format_prompt

log = logging.getLogger("gptpipe.judge")

# The book's `format_input` is the Alpaca prompt without its trailing response header.
RESPONSE_HEADER = "\n\n### Response:\n"
# 5xx and 429 mean the server is there but struggling: worth a couple more tries.
RETRIES = 2
RETRY_DELAY_S = 1.0
DISABLE_HINT = "or set evaluate.judge.enabled: false to skip judging"
# Integers and decimals, with a sign, so that "-5" or "8.5" are not read as 5.
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


class JudgeUnavailable(RuntimeError):
    """The judge cannot score anything: the message names the endpoint, the model, what went
    wrong and how to fix it."""


def judge_prompt(entry: dict[str, str]) -> str:
    """The book's scoring prompt for one record with its `model_response`."""
    task = format_prompt(entry, "alpaca").removesuffix(RESPONSE_HEADER)
    return (
        f"Given the input `{task}` "
        f"and correct output `{entry['output']}`, "
        f"score the model response `{entry['model_response']}`"
        " on a scale from 0 to 100, where 100 is the best score. "
        "Respond with the integer number only."
    )


def parse_score(reply: str) -> int | None:
    """The first integer from 0 to 100 in the reply (judges often add words: "Score: 85."), or
    None when there is none: such a reply is unscored, never a 0."""
    for match in _NUMBER.finditer(reply):
        text = match.group().lstrip("+")
        if text.isdigit() and int(text) <= 100:
            return int(text)
    return None


@dataclass(frozen=True)
class JudgeResult:
    """Scores of one set of responses; `scores[i]` is None where the reply held no score."""

    scores: list[int | None]

    @property
    def scored(self) -> int:
        return sum(s is not None for s in self.scores)

    @property
    def unscored(self) -> int:
        return len(self.scores) - self.scored

    @property
    def mean_score(self) -> float | None:
        """Mean over the scored records; None when none was scored."""
        return sum(s for s in self.scores if s is not None) / self.scored if self.scored else None

    def metrics(self, prefix: str) -> dict[str, float]:
        out: dict[str, float] = {f"{prefix}_judge_scored": self.scored, f"{prefix}_judge_unscored": self.unscored}
        # No score at all is left out rather than written as NaN, which JSON and DVC cannot read.
        if self.mean_score is not None:
            out[f"{prefix}_judge_score"] = self.mean_score
        return out


class JudgeClient:
    """One judge model behind `POST {endpoint}/chat/completions`."""

    def __init__(self, cfg: JudgeConfig, seed: int, *, retry_delay_s: float = RETRY_DELAY_S) -> None:
        self.cfg = cfg
        self.seed = seed
        self.retry_delay_s = retry_delay_s
        self.url = cfg.endpoint.rstrip("/") + "/chat/completions"
        headers = self._auth_header()  # first: a missing key fails before any connection opens
        self.session = requests.Session()
        self.session.headers.update(headers)

    def close(self) -> None:
        self.session.close()

    def unavailable(self, what: str, fix: str) -> JudgeUnavailable:
        return JudgeUnavailable(f"LLM judge {self.cfg.model!r} at {self.cfg.endpoint}: {what}; {fix}, {DISABLE_HINT}")

    def _auth_header(self) -> dict[str, str]:
        name = self.cfg.api_key_env
        if name is None:
            return {}
        key = os.environ.get(name, "").strip()
        if not key:
            raise self.unavailable(f"environment variable {name} (evaluate.judge.api_key_env) is unset or empty",
                                   f"export {name}=<your API key>")
        return {"Authorization": f"Bearer {key}"}

    def score(self, entry: dict[str, str]) -> int | None:
        return parse_score(self.ask(judge_prompt(entry)))

    def ask(self, prompt: str) -> str:
        """The judge's reply to one user message: greedy and seeded, so reruns agree."""
        body = {"model": self.cfg.model, "messages": [{"role": "user", "content": prompt}],
                "temperature": 0, "seed": self.seed}
        for attempt in range(RETRIES + 1):
            resp = self._post(body)
            if resp.status_code < 500 and resp.status_code != 429:
                break
            if attempt < RETRIES:
                time.sleep(self.retry_delay_s * 2**attempt)
        self._check(resp, tries=attempt + 1)
        return self._content(resp)

    def _post(self, body: dict[str, Any]) -> requests.Response:
        cfg = self.cfg
        try:
            return self.session.post(self.url, json=body, timeout=cfg.timeout_s)
        except requests.exceptions.Timeout as exc:
            raise self.unavailable(
                f"no reply within {cfg.timeout_s:g} s", "make sure the server is up and not overloaded (a model "
                "loads on its first request) and raise evaluate.judge.timeout_s") from exc
        except requests.exceptions.ConnectionError as exc:
            raise self.unavailable(
                f"cannot connect ({_root_cause(exc)})",
                f"start the server (Ollama: `ollama serve`, then `ollama pull {cfg.model}`) or fix "
                "evaluate.judge.endpoint") from exc
        except requests.exceptions.RequestException as exc:
            raise self.unavailable(f"request failed ({exc})", "check evaluate.judge.endpoint") from exc

    def _check(self, resp: requests.Response, tries: int) -> None:
        code = resp.status_code
        if 200 <= code < 300:
            return
        what = f"HTTP {code} {resp.reason}" + (f" after {tries} tries" if tries > 1 else "") + _detail(resp)
        if code in (401, 403):
            key = self.cfg.api_key_env
            fix = (f"check the API key in ${key}" if key else
                   "the server wants an API key: put it in an environment variable and name that variable "
                   "in evaluate.judge.api_key_env")
        elif code == 404:
            fix = (f"check evaluate.judge.endpoint (the API's base URL, e.g. http://localhost:11434/v1 for Ollama) "
                   f"and that the server has model {self.cfg.model!r} (Ollama: `ollama pull {self.cfg.model}`)")
        elif code >= 500 or code == 429:
            fix = "the server is failing or busy: check its log and try again later"
        else:
            fix = "check evaluate.judge.endpoint and evaluate.judge.model"
        raise self.unavailable(what, fix)

    def _content(self, resp: requests.Response) -> str:
        try:
            content = resp.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise self.unavailable(
                "the reply is not an OpenAI-style chat completion" + _detail(resp),
                "point evaluate.judge.endpoint at the API's base URL (Ollama: http://localhost:11434/v1)") from exc
        # A refusal or an empty message carries no score; it is unscored, not an error.
        return content if isinstance(content, str) else ""


def _detail(resp: requests.Response, limit: int = 200) -> str:
    """The start of the server's own explanation (Ollama: "model 'x' not found, try pulling it")."""
    text = " ".join(resp.text.split())
    return f": {text[:limit]}" if text else ""


def _root_cause(exc: BaseException) -> str:
    """The innermost reason (e.g. "[Errno 111] Connection refused"), not requests' wrapping of it."""
    reason: Any = exc.args[0] if exc.args else exc
    reason = getattr(reason, "reason", reason)
    # urllib3 prefixes the connection's repr, which only repeats the endpoint.
    return re.sub(r"^\w+\(host=[^)]*\): ", "", str(reason))


def score_responses(
    records: Sequence[dict[str, str]], cfg: JudgeConfig, seed: int, *, retry_delay_s: float = RETRY_DELAY_S,
    desc: str = "judging responses",
) -> JudgeResult:
    """Score the first `cfg.max_records` records; stop at the first JudgeUnavailable, since the
    next request would meet the same dead endpoint."""
    chosen = records[: cfg.max_records] if cfg.max_records is not None else records
    client = JudgeClient(cfg, seed, retry_delay_s=retry_delay_s)
    try:
        scores = [client.score(entry) for entry in tqdm(chosen, desc=desc, unit="rec", mininterval=0.5)]
    finally:
        client.close()
    return JudgeResult(scores)


@dataclass(frozen=True)
class JudgeOutcome:
    """What the evaluate stage reports: metrics, and the results when the judge could answer."""

    metrics: dict[str, float]
    finetuned: JudgeResult | None = None
    start: JudgeResult | None = None
    problem: str | None = None


def judge_instruct(
    responses: Sequence[dict[str, str]], baseline: Sequence[dict[str, str]], cfg: JudgeConfig, seed: int,
    *, retry_delay_s: float = RETRY_DELAY_S,
) -> JudgeOutcome:
    """Judge the finetuned responses and the pretrained-only ones; an unreachable judge becomes a
    warning and `instruct_judge_available = 0`, so the stage still reports everything else."""
    try:
        finetuned = score_responses(responses, cfg, seed, retry_delay_s=retry_delay_s,
                                    desc="judging finetuned responses")
        start = score_responses(baseline, cfg, seed, retry_delay_s=retry_delay_s,
                                desc="judging pretrained-only responses")
    except JudgeUnavailable as err:
        log.warning("LLM judge unavailable; no judge scores this run, every other metric is still reported. %s", err)
        return JudgeOutcome({"instruct_judge_available": 0}, problem=str(err))
    # Half a comparison would mislead, so scores are reported only when both sets were judged.
    metrics: dict[str, float] = {"instruct_judge_available": 1}
    metrics.update(finetuned.metrics("instruct"))
    metrics.update(start.metrics("instruct_start"))
    log.info("LLM judge %s: finetuned %s, pretrained only %s (mean 0-100 over scored records)", cfg.model,
             _fmt(finetuned.mean_score), _fmt(start.mean_score))
    return JudgeOutcome(metrics, finetuned, start)


def judged_records(
    responses: Sequence[dict[str, str]], baseline: Sequence[dict[str, str]], outcome: JudgeOutcome | None
) -> list[dict[str, Any]]:
    """Each test record with its judge scores (None where not judged or unscored) and the
    pretrained-only response beside the finetuned one."""
    n = len(responses)
    finetuned = _padded(outcome.finetuned if outcome else None, n)
    start = _padded(outcome.start if outcome else None, n)
    return [
        {**r, "judge_score": f, "pretrained_only_response": b["model_response"], "pretrained_only_judge_score": s}
        for r, b, f, s in zip(responses, baseline, finetuned, start)
    ]


def _padded(result: JudgeResult | None, n: int) -> list[int | None]:
    scores = result.scores if result is not None else []
    return scores + [None] * (n - len(scores))


def _fmt(score: float | None) -> str:
    return "no score" if score is None else f"{score:.1f}"
