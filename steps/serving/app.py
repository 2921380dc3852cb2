"""The FastAPI app behind `gptpipe serve`: OpenAI's /v1/models, /v1/completions and
/v1/chat/completions (streamed as server-sent events when asked), /v1/classify for classifiers,
/stats, and the playground page at / (playground.html). Generation for each language model runs
in its GenerationWorker, where requests that arrive together share forward passes.

Every refusal is a 4xx with OpenAI's error object; anything unexpected is a 500 with the same
shape, and the server goes on serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from model.generate import Sampling
from steps.inference.chat import Turn
from steps.inference.classify import classify
from steps.inference.loading import LoadedModel, chat_prompt_style
from steps.inference.streaming import TextStream, encode
from steps.serving import openai_api as api
from steps.serving.openai_api import APIError
from steps.serving.worker import GenerationWorker
from steps.tasks.instruction import format_prompt

log = logging.getLogger("gptpipe.serving")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; `gptpipe serve`'s flags set them."""

    max_prompt_tokens: int | None
    """Longest prompt (chat: the formatted conversation) in tokens; None: the model's context."""
    max_tokens: int
    """Most tokens a request may have generated; also what it gets when it names no max_tokens
    (less where the context has less room)."""
    max_batch: int
    """Most sequences one model decodes together."""
    max_texts: int
    """Most texts one /v1/classify request may send."""


def create_app(models: Sequence[LoadedModel], limits: Limits) -> FastAPI:
    """The app serving `models` (names must differ) under `limits`."""
    by_name = {m.name: m for m in models}
    if len(by_name) != len(models):
        raise ValueError(f"two served models share a name: {[m.name for m in models]}; serve them under different names")
    workers: dict[str, GenerationWorker] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for m in models:
            if m.kind != "classifier":
                workers[m.name] = GenerationWorker(m.model, limits.max_batch, m.name)
        yield
        for worker in workers.values():
            worker.close()

    app = FastAPI(title="gptpipe", lifespan=lifespan)
    add_error_handlers(app)
    # Package data (pyproject.toml), read once: a broken install fails here, not on a visit.
    playground = resources.files("steps.serving").joinpath("playground.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def playground_page() -> HTMLResponse:
        """Chat and classify in a browser, through this API (steps/serving/playground.html)."""
        return HTMLResponse(playground)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": m.name, "object": "model", "created": 0, "owned_by": "gptpipe", "kind": m.kind,
             "context_length": m.context_length, **({"labels": m.labels} if m.labels else {})}
            for m in models]}

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        """Per model: how many decode passes ran with how many sequences (batching at work)."""
        return {"models": {name: {"decode_batch_sizes": w.decode_batch_sizes} for name, w in workers.items()}}

    @app.post("/v1/completions")
    async def completions(body: api.CompletionRequest) -> Any:
        loaded = find_model(by_name, body.model, ("lm", "instruct"))
        body.refuse_unsupported()
        text = body.text()
        prompt = encode(loaded, text) or [loaded.eot_id]  # an empty prompt starts a new document
        job = Job.plan(loaded, workers[loaded.name], prompt, body, body.max_tokens, limits)
        if body.stream:
            return event_stream(completion_events(job, api.new_id("cmpl"), loaded.name))
        text, finish = await job.text()
        return api.completion(api.new_id("cmpl"), loaded.name, text, finish, job.usage())

    @app.post("/v1/chat/completions")
    async def chat_completions(body: api.ChatRequest) -> Any:
        loaded = find_model(by_name, body.model, ("instruct", "lm"))
        body.refuse_unsupported()
        prompt = chat_prompt(loaded, body.messages)
        job = Job.plan(loaded, workers[loaded.name], prompt, body, body.output_limit(), limits)
        if body.stream:
            return event_stream(chat_events(job, api.new_id("chatcmpl"), loaded.name))
        text, finish = await job.text()
        return api.chat_completion(api.new_id("chatcmpl"), loaded.name, text, finish, job.usage())

    @app.post("/v1/classify")
    async def classify_texts(body: api.ClassifyRequest) -> dict[str, Any]:
        loaded = find_model(by_name, body.model, ("classifier",))
        texts = body.texts()
        if not 1 <= len(texts) <= limits.max_texts:
            raise APIError(400, f"input: send 1 to {limits.max_texts} texts, got {len(texts)}", param="input")
        # The forward pass blocks: off the event loop, which keeps serving meanwhile.
        predictions = await asyncio.to_thread(classify, loaded, texts, limits.max_texts)
        return {"object": "list", "model": loaded.name, "data": [
            {"index": i, "label": label, "probabilities": probs} for i, (label, probs) in enumerate(predictions)]}

    return app


# --- requests to generation jobs ---------------------------------------------------------------


def find_model(by_name: dict[str, LoadedModel], name: str, kinds: tuple[str, ...]) -> LoadedModel:
    """The served model `name`, which must be of one of `kinds` for this endpoint."""
    loaded = by_name.get(name)
    if loaded is None:
        raise APIError(404, f"The model '{name}' does not exist; this server has: {', '.join(by_name)} "
                            f"(GET /v1/models lists them)", param="model", code="model_not_found")
    if loaded.kind not in kinds:
        fits = [m.name for m in by_name.values() if m.kind in kinds]
        raise APIError(400, f"'{name}' is a model of kind {loaded.kind}; this endpoint needs one of kind "
                            f"{' or '.join(kinds)} (served: {', '.join(fits) or 'none'})", param="model",
                       code="wrong_model_kind")
    return loaded


def chat_prompt(loaded: LoadedModel, messages: Sequence[api.ChatMessage]) -> list[int]:
    """The conversation as the model was trained to read it: each user message in its prompt
    style, each assistant reply after it closed by end-of-text (the layout `gptpipe chat` uses,
    steps/inference/chat.py), ending with the last user message's prompt. System (developer)
    messages have no place in the book's prompt styles: their text leads the next user message."""
    style = chat_prompt_style(loaded)
    turns: list[Turn] = []
    system: list[str] = []
    pending: Turn | None = None
    for i, message in enumerate(messages):
        text = message.text()
        if message.role in ("system", "developer"):
            system.append(text)
        elif message.role == "user":
            if pending is not None:
                raise APIError(400, f"messages[{i}]: two user messages in a row; put an assistant message between "
                                    "them or join them", param=f"messages[{i}]")
            instruction = "\n\n".join([*system, text])
            system = []
            pending = Turn(text, encode(loaded, format_prompt({"instruction": instruction, "input": ""}, style)), [])
        else:  # assistant
            if pending is None:
                raise APIError(400, f"messages[{i}]: an assistant message must follow a user message",
                               param=f"messages[{i}]")
            pending.reply_ids = encode(loaded, text)
            turns.append(pending)
            pending = None
    if pending is None:
        raise APIError(400, "messages: the last message must be from the user (the one to reply to)", param="messages")
    history = [token for turn in turns for token in turn.ids(loaded.eot_id)]
    return history + pending.prompt_ids


@dataclass
class Job:
    """One request's generation, checked against the model and the limits."""

    loaded: LoadedModel
    worker: GenerationWorker
    prompt: list[int]
    max_new_tokens: int
    sampling: Sampling
    stops: list[str]
    made: int = 0

    @classmethod
    def plan(cls, loaded: LoadedModel, worker: GenerationWorker, prompt: list[int], body: api._Sampling,
             asked: int | None, limits: Limits) -> Job:
        context = loaded.context_length
        prompt_limit = min(limits.max_prompt_tokens or context, context)
        param = "messages" if isinstance(body, api.ChatRequest) else "prompt"
        if len(prompt) > prompt_limit:
            raise APIError(400, f"The prompt is {len(prompt)} tokens; this server takes at most {prompt_limit} for "
                                f"'{loaded.name}' (context length {context}): shorten it", param=param,
                           code="context_length_exceeded")
        room = context - len(prompt)
        if asked is not None and asked > limits.max_tokens:
            raise APIError(400, f"max_tokens is {asked}; this server generates at most {limits.max_tokens} tokens "
                                "per request (gptpipe serve --max-tokens)", param="max_tokens")
        if asked is not None and asked > room:
            raise APIError(400, f"This model's maximum context length is {context} tokens. However, you requested "
                                f"{len(prompt) + asked} tokens ({len(prompt)} in the prompt, {asked} in the completion). "
                                "Please reduce the prompt or max_tokens.", param="max_tokens",
                           code="context_length_exceeded")
        if asked is None and room < 1:
            raise APIError(400, f"The prompt is {len(prompt)} tokens and fills the context ({context}): no room to "
                                "generate; shorten it", param=param, code="context_length_exceeded")
        sampling = Sampling(temperature=body.temperature, top_k=body.top_k, top_p=body.top_p, seed=body.seed)
        return cls(loaded, worker, prompt, asked or min(limits.max_tokens, room), sampling, body.stops())

    async def pieces(self) -> AsyncIterator[tuple[str, str | None]]:
        """(text, finish reason) pairs as tokens are made; the finish reason only on the last,
        "stop" (end-of-text or a stop string) or "length". Text is whole characters only, and
        text that might begin a stop string is held back until it is clear."""
        stream = TextStream(self.loaded.tokenizer, self.prompt)
        stops = StopMatcher(self.stops)
        eot = self.loaded.eot_id
        # aclosing: leaving early closes the worker's stream at once, which cancels the sequence.
        async with aclosing(self.worker.tokens(self.prompt, self.max_new_tokens, self.sampling, eot)) as tokens:
            async for token in tokens:
                text = ""
                if token.token != eot:  # end-of-text ends the reply; it is not part of it
                    self.made += 1
                    text, stopped = stops.push(stream.push(token.token))
                    if stopped:
                        yield text, "stop"
                        return
                if token.finish is None:
                    if text:
                        yield text, None
                    continue
                rest, stopped = stops.push(stream.flush())
                yield text + (rest if stopped else rest + stops.flush()), "stop" if stopped else token.finish
                return

    async def text(self) -> tuple[str, str]:
        parts, finish = [], "length"
        async for text, reason in self.pieces():
            parts.append(text)
            finish = reason or finish
        return "".join(parts), finish

    def usage(self) -> dict[str, int]:
        return api.usage(len(self.prompt), self.made)


class StopMatcher:
    """Cuts text at the first of the stop strings, holding back an end that may be the start of one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.held = ""

    def push(self, text: str) -> tuple[str, bool]:
        """(text safe to emit, whether a stop string was reached)."""
        self.held += text
        hits = [i for i in (self.held.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.held = self.held[: min(hits)], ""
            return out, True
        keep = max((k for s in self.stops for k in range(1, len(s)) if self.held.endswith(s[:k])), default=0)
        out, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep :]
        return out, False

    def flush(self) -> str:
        out, self.held = self.held, ""
        return out


# --- streams -----------------------------------------------------------------------------------


def event_stream(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def completion_events(job: Job, id: str, model: str) -> AsyncIterator[str]:
    created = int(time.time())
    try:
        async for text, finish in job.pieces():
            yield api.sse(api.completion_chunk(id, created, model, text, finish))
    except Exception as err:  # noqa: BLE001 - the status is sent: report it in the stream
        yield stream_error(err)
        return
    yield api.DONE


async def chat_events(job: Job, id: str, model: str) -> AsyncIterator[str]:
    # As OpenAI: the role first, then content deltas, then an empty delta with the finish reason.
    created = int(time.time())
    yield api.sse(api.chat_chunk(id, created, model, {"role": "assistant", "content": ""}, None))
    try:
        async for text, finish in job.pieces():
            if text:
                yield api.sse(api.chat_chunk(id, created, model, {"content": text}, None))
            if finish is not None:
                yield api.sse(api.chat_chunk(id, created, model, {}, finish))
    except Exception as err:  # noqa: BLE001 - the status is sent: report it in the stream
        yield stream_error(err)
        return
    yield api.DONE


def stream_error(err: Exception) -> str:
    """A failure after a stream has begun can no longer change the response's status: it ends
    the stream as an error event, as OpenAI's streams do."""
    log.error("a streamed generation failed: %s", err, exc_info=err)
    return api.sse(api.error_body(f"generation failed: {err}", "server_error"))


# --- errors ------------------------------------------------------------------------------------


def add_error_handlers(app: FastAPI) -> None:
    """Every error as OpenAI's error object, never FastAPI's {"detail": ...}."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_error(err.errors()).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path}: {err.detail}"
        if err.status_code == 404:
            message += " (this server has GET /v1/models, POST /v1/completions, /v1/chat/completions, /v1/classify)"
        return JSONResponse(api.error_body(message, "invalid_request_error"), status_code=err.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse(api.error_body(f"internal error: {type(err).__name__}: {err}", "server_error"),
                            status_code=500)


def validation_error(errors: Sequence[Any]) -> APIError:
    """The first of pydantic's errors as one sentence naming the field."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        return APIError(400, "We could not parse the JSON body of your request: it is not valid JSON "
                             f"({first.get('msg')}, {first.get('ctx', {}).get('error', '')}). Send a JSON object "
                             "with Content-Type: application/json.", code="invalid_json")
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    # Union types add their member type to the path (prompt.str); keep the field names.
    param = ".".join(p for p in loc if p not in ("str", "list[str]", "list[TextPart]")) or None
    if first.get("type") == "missing":
        return APIError(400, f"'{param}' is a required property", param=param)
    return APIError(400, f"{param or 'body'}: {first.get('msg')}", param=param)
