"""The generation worker: one thread per served language model drives a BatchGenerator; requests
from the server's event loop join its batch between decode steps and get their tokens back on
asyncio queues.

Why a thread: a decode step is seconds of blocking tensor work at worst, which must not stall
the event loop that reads requests and writes streamed tokens; PyTorch releases the GIL inside
its kernels, so the loop keeps answering while the worker computes. Why one thread per model:
every request for that model then shares the same forward passes (continuous batching).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from model.generate import BatchGenerator, Sampling, Token
from model.gpt import GPTModel

log = logging.getLogger("gptpipe.serving")


class GenerationFailed(RuntimeError):
    """The model failed while generating for a request (the server answers 500 and goes on)."""


@dataclass
class _Request:
    prompt: list[int]
    max_new_tokens: int
    sampling: Sampling
    eos_id: int | None
    loop: asyncio.AbstractEventLoop
    tokens: asyncio.Queue = field(default_factory=asyncio.Queue)
    """Token, or an exception that ends the request."""
    seq: int | None = None
    cancelled: bool = False


class GenerationWorker:
    """Generation for one model, batched across requests, in its own thread."""

    def __init__(self, model: GPTModel, max_batch: int, name: str = "model") -> None:
        self.model = model
        self.max_batch = max_batch
        self.engine = BatchGenerator(model, max_batch)
        self._inbox: queue.Queue[_Request | object | None] = queue.Queue()  # None: stop
        self._active: dict[int, _Request] = {}
        self._batch_sizes: dict[int, int] = {}  # a copy made by the worker after each step, read by others
        self._thread = threading.Thread(target=self._run, name=f"generate-{name}", daemon=True)
        self._thread.start()

    @property
    def decode_batch_sizes(self) -> dict[int, int]:
        """How many decode passes ran with how many sequences (read by /stats)."""
        return self._batch_sizes

    def close(self) -> None:
        self._inbox.put(None)
        self._thread.join(timeout=30)

    async def tokens(self, prompt: list[int], max_new_tokens: int, sampling: Sampling,
                     eos_id: int | None) -> AsyncIterator[Token]:
        """The request's tokens as they are made, the last one with `finish` set. Leaving the loop
        early (a client that hangs up) cancels the sequence and frees its batch row."""
        request = _Request(prompt, max_new_tokens, sampling, eos_id, asyncio.get_running_loop())
        self._inbox.put(request)
        try:
            while True:
                item = await request.tokens.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish is not None:
                    return
        finally:
            request.cancelled = True  # read by the worker thread: a plain flag is enough under the GIL
            self._inbox.put_nowait(_WAKE)

    # --- the worker thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            # Block only when there is nothing to decode; otherwise take what has arrived and go on.
            items = [self._inbox.get()] if not self.engine.has_work else []
            while True:
                try:
                    items.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            if None in items:
                return
            for request in items:
                if isinstance(request, _Request):
                    self._admit(request)
            self._drop_cancelled()
            if self.engine.has_work:
                self._step()

    def _admit(self, request: _Request) -> None:
        try:
            request.seq = self.engine.add(request.prompt, request.max_new_tokens, request.sampling, request.eos_id)
        except ValueError as err:  # the app checks requests first; this is the last line
            self._send(request, err)
            return
        self._active[request.seq] = request

    def _drop_cancelled(self) -> None:
        for seq, request in list(self._active.items()):
            if request.cancelled:
                self.engine.cancel(seq)
                del self._active[seq]

    def _step(self) -> None:
        try:
            made = self.engine.step()
        except Exception as err:
            log.exception("generation failed; the %d requests in the batch get an error", len(self._active))
            failure = GenerationFailed(f"generation failed: {type(err).__name__}: {err}")
            for request in self._active.values():
                self._send(request, failure)
            self._active.clear()
            self.engine = BatchGenerator(self.model, self.max_batch)  # a clean batch for the next requests
            return
        self._batch_sizes = dict(self.engine.decode_batch_sizes)
        for token in made:
            request = self._active.get(token.seq)
            if request is None:
                continue
            self._send(request, token)
            if token.finish is not None:
                del self._active[token.seq]

    @staticmethod
    def _send(request: _Request, item: Token | BaseException) -> None:
        # The queue belongs to the event loop's thread: hand the put to that loop.
        try:
            request.loop.call_soon_threadsafe(request.tokens.put_nowait, item)
        except RuntimeError:  # the loop is closed: the server is shutting down
            pass


_WAKE = object()
"""Wakes the worker to notice a cancellation."""
