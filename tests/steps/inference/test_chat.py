"""Chat: turns in the model's prompt style, the history within the context window (oldest turns
dropped, and counted), reset, a message too long for any history."""

from __future__ import annotations

import pytest

from steps.inference.chat import ChatSession, MessageTooLong
from steps.inference.loading import load
from steps.inference.streaming import Sampling, encode
from steps.tasks.instruction import format_prompt
from tests.steps.inference import tiny_models

GREEDY = Sampling(max_new_tokens=8)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return load(tiny_models.instruct_folder(tmp_path_factory.mktemp("models"), tiny_models.tokenizer(),
                                            style="phi3"))


def prompt_ids(loaded, message: str) -> list[int]:
    return encode(loaded, format_prompt({"instruction": message, "input": ""}, "phi3"))


def test_each_turn_is_prompted_in_the_style_after_the_earlier_ones(loaded) -> None:
    session = ChatSession(loaded, "phi3", max_new_tokens=8)
    first = session.ask("Say hello.", GREEDY)
    assert first.completion.prompt_ids == prompt_ids(loaded, "Say hello.")
    answer = "".join(first)
    assert answer == loaded.tokenizer.decode(first.completion.ids)
    second = session.ask("ok see you later", GREEDY)
    # Each earlier exchange closed by end-of-text, as training showed the model one exchange.
    assert second.completion.prompt_ids == (prompt_ids(loaded, "Say hello.") + first.completion.ids
                                            + [loaded.eot_id] + prompt_ids(loaded, "ok see you later"))
    assert second.dropped == 0
    "".join(second)
    assert [t.message for t in session.turns] == ["Say hello.", "ok see you later"]


def test_the_oldest_turns_are_dropped_when_the_window_would_overflow(loaded) -> None:
    session = ChatSession(loaded, "phi3", max_new_tokens=8)
    assert session.prompt_budget == loaded.context_length - 8
    dropped = []
    messages = [f"Are we still meeting for lunch {n}?" for n in range(12)]
    for message in messages:
        reply = session.ask(message, GREEDY)
        assert len(reply.completion.prompt_ids) <= session.prompt_budget
        dropped.append(reply.dropped)
        "".join(reply)
    assert sum(dropped) > 0 and dropped[0] == 0
    assert [t.message for t in session.turns] == messages[sum(dropped):]  # the newest kept, in order
    assert session.history_length() + 8 <= loaded.context_length


def test_reset_forgets_the_history(loaded) -> None:
    session = ChatSession(loaded, "phi3", max_new_tokens=8)
    "".join(session.ask("Say hello.", GREEDY))
    session.reset()
    assert session.ask("Say hello.", GREEDY).completion.prompt_ids == prompt_ids(loaded, "Say hello.")


def test_a_message_longer_than_the_window_is_refused_and_the_history_kept(loaded) -> None:
    session = ChatSession(loaded, "phi3", max_new_tokens=500)
    assert session.reply_budget == loaded.context_length // 2  # a message always has room
    "".join(session.ask("hi", GREEDY))
    with pytest.raises(MessageTooLong, match=r"the message is \d+ tokens in the phi3 prompt; the model reads 96 "
                                             r"and 48 are kept for the reply: shorten it"):
        session.ask("Win a free prize now " * 20, GREEDY)
    assert [t.message for t in session.turns] == ["hi"]


def test_a_reply_is_at_most_the_reply_budget(loaded) -> None:
    session = ChatSession(loaded, "phi3", max_new_tokens=3)
    reply = session.ask("Say hello.", Sampling(max_new_tokens=50))
    "".join(reply)
    assert len(reply.completion.ids) <= 3
