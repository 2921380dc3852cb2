"""Streaming generation: the tokens generate() makes, text emitted only as complete UTF-8."""

from __future__ import annotations

import pytest
import torch

from model.generate import generate
from steps.inference.loading import load
from steps.inference.streaming import (
    REPLACEMENT,
    Completion,
    Sampling,
    TextStream,
    encode,
)
from tests.steps.inference import tiny_models


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return load(tiny_models.lm_folder(tmp_path_factory.mktemp("models"), tiny_models.tokenizer()))


def test_multi_byte_characters_are_emitted_whole(loaded) -> None:
    text = "Café au lait, crème brûlée et 日本語 の テキスト"
    ids = encode(loaded, text)
    # The tokenizer splits some characters' bytes over several tokens: the case that matters.
    assert any(REPLACEMENT in loaded.tokenizer.decode([i]) for i in ids)
    stream = TextStream(loaded.tokenizer)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == text
    assert not any(REPLACEMENT in piece for piece in pieces)
    assert sum(1 for piece in pieces if piece) > 5  # emitted along the way, not all at the end


def test_a_reply_streams_as_it_reads_after_its_prompt(loaded) -> None:
    """Our BPE writes a space before a text's first word and after a newline and its decoder takes
    them out: streamed after a prompt, a reply keeps the spaces it has in the joined text."""
    text = "Win a free prize\nnow, call to claim\n\nyour cash reward"
    ids = encode(loaded, text)
    for k in range(1, len(ids)):
        stream = TextStream(loaded.tokenizer, ids[:k])
        reply = "".join([stream.push(i) for i in ids[k:]] + [stream.flush()])
        assert loaded.tokenizer.decode(ids[:k]) + reply == text, k
    # Without a prompt (or after end-of-text) the reply is a text of its own, its first space dropped.
    stream = TextStream(loaded.tokenizer, [loaded.eot_id])
    assert "".join([stream.push(i) for i in ids] + [stream.flush()]) == text


def test_an_unfinished_character_is_flushed_at_the_end(loaded) -> None:
    ids = encode(loaded, "日本")
    stream = TextStream(loaded.tokenizer)
    held = "".join(stream.push(i) for i in ids[:-1])
    assert REPLACEMENT not in held
    assert stream.flush() == loaded.tokenizer.decode(ids[:-1])[len(held):]


def test_greedy_streaming_makes_generates_tokens_and_text(loaded) -> None:
    prompt = encode(loaded, "Win a free prize")
    completion = Completion(loaded, prompt, Sampling(max_new_tokens=20))
    text = completion.text()
    expected = generate(loaded.model, torch.tensor([prompt]), 20, loaded.context_length,
                        eos_id=loaded.eot_id)[0, len(prompt):].tolist()
    if loaded.eot_id in expected:
        expected = expected[: expected.index(loaded.eot_id)]
    assert completion.ids == expected and len(expected) > 0
    assert text == tiny_models.continuation(loaded.tokenizer, prompt, expected)
    assert completion.stopped == ("length" if len(expected) == 20 else "eos")


def test_a_seed_repeats_sampled_text_and_no_prompt_starts_from_end_of_text(loaded) -> None:
    sampling = Sampling(max_new_tokens=15, temperature=1.5, top_k=50, top_p=0.95, seed=7)
    first = Completion(loaded, [], sampling)
    second = Completion(loaded, [], sampling)
    assert first.text() == second.text()
    assert first.ids == second.ids
    other = Completion(loaded, [], Sampling(max_new_tokens=15, temperature=1.5, seed=8))
    other.text()
    assert other.ids != first.ids


@pytest.mark.parametrize(("field", "value", "message"), [
    ("max_new_tokens", 0, "max_new_tokens must be at least 1"),
    ("temperature", -0.1, "temperature must be >= 0"),
    ("top_k", 0, "top_k must be at least 1"),
    ("top_p", 1.5, r"top_p must be in \(0, 1\]"),
])
def test_bad_sampling_settings_are_named(field: str, value, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Sampling(**{"max_new_tokens": 5, field: value})


def test_the_model_gets_its_mode_back_after_an_early_stop(loaded) -> None:
    loaded.model.train()
    try:
        completion = iter(Completion(loaded, encode(loaded, "ok"), Sampling(max_new_tokens=10)))
        next(completion)
        completion.close()
        assert loaded.model.training  # its own mode back
    finally:
        loaded.model.eval()
