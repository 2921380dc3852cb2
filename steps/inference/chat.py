"""A conversation with an instruction model: each turn in the prompt style it was trained with,
the history kept within the context window by dropping the oldest turns (and saying so).

Training showed the model one exchange per sequence: the prompt, the response, end-of-text. A
chat is those exchanges one after another, each closed by end-of-text as in training, so the
model reads earlier turns as the documents before the current one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from steps.inference.loading import LoadedModel
from steps.inference.streaming import Completion, Sampling, encode
from steps.tasks.instruction import PromptStyle, format_prompt


class MessageTooLong(ValueError):
    """A message that does not fit the context window even with no history."""


@dataclass
class Turn:
    message: str
    prompt_ids: list[int]
    """The message in the prompt style, as tokens."""
    reply_ids: list[int]

    def ids(self, eot_id: int) -> list[int]:
        return self.prompt_ids + self.reply_ids + [eot_id]


@dataclass
class Reply:
    """A reply in progress: iterate it for its text as it is made; read to its end, its turn joins
    the session's history. `dropped` old turns were left out of the history to make room."""

    session: ChatSession = field(repr=False)
    turn: Turn
    completion: Completion = field(repr=False)
    dropped: int

    def __iter__(self) -> Iterator[str]:
        yield from self.completion
        # The reply's own tokens, not its text re-encoded: the history is what the model read.
        self.turn.reply_ids = list(self.completion.ids)
        self.session.turns.append(self.turn)


class ChatSession:
    """The turns so far and how to prompt the model with them.

    `max_new_tokens` is kept free in the window for each reply (at most half the window, so a
    message always has room too); the history is cut from the oldest turn to fit the rest.
    """

    def __init__(self, loaded: LoadedModel, style: PromptStyle, max_new_tokens: int) -> None:
        self.loaded = loaded
        self.style = style
        self.reply_budget = max(1, min(max_new_tokens, loaded.context_length // 2))
        self.turns: list[Turn] = []

    @property
    def prompt_budget(self) -> int:
        """Tokens of history plus the new message that fit beside a reply."""
        return self.loaded.context_length - self.reply_budget

    def reset(self) -> None:
        self.turns = []

    def ask(self, message: str, sampling: Sampling) -> Reply:
        """The reply to `message` (at most the reply budget long), to iterate."""
        prompt_ids = encode(self.loaded, format_prompt({"instruction": message, "input": ""}, self.style))
        if len(prompt_ids) > self.prompt_budget:
            raise MessageTooLong(
                f"the message is {len(prompt_ids)} tokens in the {self.style} prompt; the model reads "
                f"{self.loaded.context_length} and {self.reply_budget} are kept for the reply: shorten it "
                f"(or lower --max-new-tokens)")
        dropped = self.fit(len(prompt_ids))
        history = [token for turn in self.turns for token in turn.ids(self.loaded.eot_id)]
        sampling = Sampling(min(sampling.max_new_tokens, self.reply_budget), sampling.temperature,
                            sampling.top_k, sampling.top_p, sampling.seed)
        turn = Turn(message, prompt_ids, [])
        completion = Completion(self.loaded, history + prompt_ids, sampling)
        return Reply(self, turn, completion, dropped)

    def fit(self, new_tokens: int) -> int:
        """Drop the oldest turns until the history and `new_tokens` fit the prompt budget; how many went."""
        dropped = 0
        while self.turns and self.history_length() + new_tokens > self.prompt_budget:
            self.turns.pop(0)
            dropped += 1
        return dropped

    def history_length(self) -> int:
        return sum(len(turn.ids(self.loaded.eot_id)) for turn in self.turns)
