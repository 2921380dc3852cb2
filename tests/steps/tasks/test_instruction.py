"""Tests for instruction finetuning data and response generation (steps/tasks/instruction.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from model.generate import generate as real_generate
from model.gpt import GPTModel
from steps.tasks import instruction
from steps.tasks.instruction import (
    IGNORE_INDEX,
    ScoredBatches,
    collate,
    encode_records,
    fit_records,
    format_prompt,
    generate_responses,
    instruction_loss,
    mean_instruction_loss,
    read_instructions,
    split_in_order,
)
from steps.tokenization.tokenizer import eot_id, train_bpe
from tests.params import gpt_config

CPU = torch.device("cpu")


# --- the prompt -----------------------------------------------------------------------------


def test_format_prompt_with_input_matches_the_book() -> None:
    record = {"instruction": "Identify the correct spelling of the following word.",
              "input": "Ocassion", "output": "The correct spelling is 'Occasion.'"}
    assert format_prompt(record) == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n"
        "### Instruction:\nIdentify the correct spelling of the following word.\n\n"
        "### Input:\nOcassion\n\n"
        "### Response:\n"
    )


def test_format_prompt_without_input_matches_the_book() -> None:
    record = {"instruction": "What is an antonym of 'complicated'?", "input": "",
              "output": "An antonym of 'complicated' is 'simple'."}
    assert format_prompt(record) == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n"
        "### Instruction:\nWhat is an antonym of 'complicated'?\n\n"
        "### Response:\n"
    )
    # A record without an "input" key at all formats the same way.
    assert format_prompt({"instruction": record["instruction"]}) == format_prompt(record)


# --- collate --------------------------------------------------------------------------------


GOLDEN_INPUTS = [[0, 1, 2, 3, 4], [5, 6, 50256, 50256, 50256], [7, 8, 9, 50256, 50256]]
GOLDEN_TARGETS = [[1, 2, 3, 4, 50256], [6, 50256, -100, -100, -100], [8, 9, 50256, -100, -100]]

def test_collate_golden_example_from_the_book() -> None:
    inputs, targets = collate([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]], pad_id=50256, allowed_max_length=1024)
    assert inputs.tolist() == GOLDEN_INPUTS
    assert targets.tolist() == GOLDEN_TARGETS


def test_collate_allowed_max_length_truncates() -> None:
    inputs, targets = collate([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]], pad_id=50256, allowed_max_length=3)
    assert inputs.tolist() == [[0, 1, 2], [5, 6, 50256], [7, 8, 9]]
    assert targets.tolist() == [[1, 2, 3], [6, 50256, -100], [8, 9, 50256]]


def test_collate_custom_ignore_index() -> None:
    inputs, targets = collate([[3, 4], [5]], pad_id=0, allowed_max_length=2, ignore_index=-1)
    assert inputs.tolist() == [[3, 4], [5, 0]]
    assert targets.tolist() == [[4, 0], [0, -1]]


def test_instruction_loss_ignores_padding() -> None:
    torch.manual_seed(0)
    model = GPTModel(gpt_config(vocab_size=16, context_length=8, emb_dim=16, n_heads=2, n_layers=1, drop_rate=0.0))
    model.eval()
    batch = collate([[1, 2, 3, 4], [5, 6]], pad_id=15, allowed_max_length=8)
    loss, n = instruction_loss(model, batch)
    inputs, targets = batch
    assert n == inputs.numel() == 2 * 4  # tokens read, padding included (throughput)
    assert int((targets != IGNORE_INDEX).sum()) == 4 + 2  # every real target plus one end-of-text per row
    keep = targets != IGNORE_INDEX
    with torch.no_grad():
        expected = F.cross_entropy(model(inputs)[keep], targets[keep])
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-6)
    single = collate([[1, 2, 3, 4]], pad_id=15, allowed_max_length=8)
    other = collate([[5, 6]], pad_id=15, allowed_max_length=8)
    assert int((single[1] != IGNORE_INDEX).sum()) == 4 and int((other[1] != IGNORE_INDEX).sum()) == 2
    weighted = (instruction_loss(model, single)[0].item() * 4 + instruction_loss(model, other)[0].item() * 2) / 6
    assert mean_instruction_loss(model, [single, other], CPU) == pytest.approx(weighted, rel=1e-5)
    with pytest.raises(ValueError, match="no validation target to score"):
        mean_instruction_loss(model, [], CPU)  # was a flattering 0.0


def test_a_batch_with_no_scored_target_is_skipped_and_counted_never_averaged_into_nan() -> None:
    # Issue 19: a validation batch whose targets were all ignore_index made val_loss NaN.
    torch.manual_seed(0)
    model = GPTModel(gpt_config(vocab_size=16, context_length=8, emb_dim=16, n_heads=2, n_layers=1, drop_rate=0.0))
    model.eval()
    scored = collate([[1, 2, 3, 4]], pad_id=15, allowed_max_length=8)
    masked = collate([[5, 6, 7]], pad_id=15, allowed_max_length=8, prompt_lengths=[5])  # prompt covers all
    assert int((masked[1] != IGNORE_INDEX).sum()) == 0
    assert torch.isnan(instruction_loss(model, masked)[0])  # what it would have added
    loss = mean_instruction_loss(model, [scored, masked], CPU)
    assert loss == pytest.approx(instruction_loss(model, scored)[0].item(), rel=1e-6)
    batches = ScoredBatches([masked, scored, masked], "train split")
    assert [b is scored for b in batches] == [True]
    assert batches.skipped == 2
    assert len(list(batches)) == 1 and batches.skipped == 4  # counted on every pass
    with pytest.raises(ValueError, match=r"^val split: no batch has a target to score"):
        list(ScoredBatches([masked], "val split"))


# --- reading and splitting ----------------------------------------------------------------


def write_json(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "instructions.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def record(i: int, **overrides: str) -> dict[str, str]:
    return {"instruction": f"Do thing {i}.", "input": "", "output": f"Done {i}.", **overrides}


def test_read_instructions_ok(tmp_path: Path) -> None:
    data = [record(0), record(1, input="x ünï")]
    assert read_instructions(write_json(tmp_path, data)) == data


@pytest.mark.parametrize(
    "data, message",
    [
        ([record(0), record(1), {"instruction": "x", "input": ""}], r"record 2: field 'output' is missing"),
        ([record(0), {**record(1), "input": None}], r"record 1: field 'input' is missing or not a string"),
        ([{**record(0), "instruction": 3}], r"record 0: field 'instruction' is missing or not a string"),
        ([record(0), {**record(1), "instruction": "  "}], r"record 1: field 'instruction' is empty"),
        ([record(0), ["not", "a", "dict"]], r"record 1 is not an object"),
        ([], r"expected a non-empty JSON list"),
        ({"instruction": "a", "input": "", "output": "b"}, r"expected a non-empty JSON list"),
    ],
)
def test_read_instructions_errors(tmp_path: Path, data: object, message: str) -> None:
    path = write_json(tmp_path, data)
    with pytest.raises(ValueError, match=message) as info:
        read_instructions(path)
    assert str(path) in str(info.value)


def test_read_instructions_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[{"instruction": "a",', encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON") as info:
        read_instructions(path)
    assert str(path) in str(info.value)


def test_split_in_order_like_the_book() -> None:
    records = [record(i) for i in range(1100)]
    splits = split_in_order(records)
    assert (len(splits["train"]), len(splits["test"]), len(splits["val"])) == (935, 110, 55)
    assert splits["train"][0] == records[0] and splits["train"][-1] == records[934]
    assert splits["test"][0] == records[935] and splits["test"][-1] == records[1044]
    assert splits["val"][0] == records[1045] and splits["val"][-1] == records[1099]


def test_split_in_order_small() -> None:
    splits = split_in_order([record(i) for i in range(7)])
    assert [len(splits[k]) for k in ("train", "test", "val")] == [5, 0, 2]


# --- responses ------------------------------------------------------------------------------


RECORDS = [
    {"instruction": "Name a colour.", "input": "", "output": "Red."},
    {"instruction": "Name a fruit.", "input": "", "output": "Apple."},
    {"instruction": "Give the plural of the word.", "input": "cat", "output": "cats"},
    {"instruction": "Name an animal.", "input": "", "output": "Dog."},
    {"instruction": "Give the opposite of the word.", "input": "hot", "output": "cold"},
    {"instruction": "Name a very large city in some country.", "input": "", "output": "Paris."},
    {"instruction": "Name a metal.", "input": "", "output": "Iron."},
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    texts = [format_prompt(r) + r["output"] for r in RECORDS] * 30
    texts += ["yes it is so", "no not at all", "maybe later"] * 30
    return train_bpe(texts, vocab_size=400)


def prompt_ids(tok: Tokenizer, r: dict[str, str]) -> list[int]:
    return tok.encode(format_prompt(r), add_special_tokens=False).ids


def test_collate_with_prompt_lengths_masks_the_prompt() -> None:
    batch = [[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]]
    inputs, targets = instruction.collate(batch, pad_id=50256, allowed_max_length=5, prompt_lengths=[3, 1, 0])
    assert inputs.tolist() == GOLDEN_INPUTS
    # Row 0: tokens 1 and 2 belong to the prompt, so are not predicted; rows 1-2: nothing to mask.
    assert targets.tolist() == [[-100, -100, 3, 4, 50256], GOLDEN_TARGETS[1], GOLDEN_TARGETS[2]]


def test_prompt_lengths_are_a_prefix_of_the_encoded_record(tok: Tokenizer) -> None:
    for r, (ids, n) in zip(RECORDS, encode_records(tok, RECORDS)):
        assert n == len(prompt_ids(tok, r))
        assert ids[:n] == prompt_ids(tok, r)
        assert n < len(ids)


@pytest.fixture(scope="module")
def indent_tok() -> Tokenizer:
    """A tokenizer that learned newline + spaces merges, as one trained on indented text does."""
    texts = [format_prompt(r) + r["output"] for r in RECORDS] * 10 + ["items:\n  one\n  two\n  three"] * 50
    return train_bpe(texts, vocab_size=400)


def test_indent_tokenizer_merges_newline_and_spaces(indent_tok: Tokenizer) -> None:
    # The precondition of the next test: the newline before "  Red." is not a token of its own.
    newline = indent_tok.encode("\n", add_special_tokens=False).ids
    assert indent_tok.encode("\n  Red.", add_special_tokens=False).ids[:1] != newline


def test_prompt_lengths_prefix_when_output_starts_with_spaces(indent_tok: Tokenizer) -> None:
    records = [{"instruction": "Name a colour.", "input": "", "output": "  Red."}]
    ids, n = encode_records(indent_tok, records)[0]
    assert ids[:n] == prompt_ids(indent_tok, records[0])
    assert indent_tok.decode(ids[n:]) == "  Red."


def test_records_cover_shared_and_distinct_prompt_lengths(tok: Tokenizer) -> None:
    # The tests below only mean something when some prompts share a length and some don't.
    lengths = [len(prompt_ids(tok, r)) for r in RECORDS]
    assert len(set(lengths)) >= 2
    assert len(set(lengths)) < len(lengths)


class ScriptedModel(nn.Module):
    """Answers each known prompt with a fixed script: answer tokens, EOT, then junk."""

    def __init__(self, vocab: int, scripts: dict[tuple[int, ...], list[int]]) -> None:
        super().__init__()
        self.vocab = vocab
        self.scripts = scripts
        self.batches: list[tuple[int, int]] = []

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        self.batches.append(tuple(idx.shape))
        logits = torch.zeros(idx.size(0), idx.size(1), self.vocab)
        for row, ids in enumerate(idx.tolist()):
            prompt = next(p for p in self.scripts if tuple(ids[: len(p)]) == p)
            script = self.scripts[prompt]
            logits[row, -1, script[min(len(ids) - len(prompt), len(script) - 1)]] = 10.0
        return logits


def test_generate_responses_stops_at_end_of_text(tok: Tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    eot = eot_id(tok)
    calls: list[tuple[int, int]] = []

    def spy(model, idx, *args, **kwargs):
        calls.append(tuple(idx.shape))
        return real_generate(model, idx, *args, **kwargs)

    monkeypatch.setattr(instruction, "generate", spy)
    answers = ["yes it is so", "no", "maybe later", "yes", "no not at all", "maybe", "it is"]
    junk = tok.encode(" JUNK", add_special_tokens=False).ids
    scripts = {
        tuple(prompt_ids(tok, r)): tok.encode(" " + a, add_special_tokens=False).ids + [eot] + junk * 5
        for r, a in zip(RECORDS, answers)
    }
    model = ScriptedModel(tok.get_vocab_size(), scripts)
    out = generate_responses(model, tok, RECORDS, CPU, eos_id=eot, max_new_tokens=20, context_length=256)
    assert [o["model_response"] for o in out] == answers
    assert [{k: v for k, v in o.items() if k != "model_response"} for o in out] == RECORDS
    # One generate call per distinct prompt length, holding every prompt of that length.
    lengths = [len(prompt_ids(tok, r)) for r in RECORDS]
    assert calls == [(lengths.count(n), n) for n in sorted(set(lengths))]
    # Each call stopped once all its rows had emitted end-of-text, long before max_new_tokens.
    longest_answer = max(len(tok.encode(" " + a, add_special_tokens=False).ids) for a in answers)
    assert len(model.batches) <= len(calls) * (longest_answer + 1)


def test_generate_responses_without_eot_uses_all_new_tokens(tok: Tokenizer) -> None:
    eot = eot_id(tok)
    word = tok.encode("no", add_special_tokens=False).ids  # ` no`: the tokenizer writes the space itself
    scripts = {tuple(prompt_ids(tok, r)): word * 50 for r in RECORDS[:2]}
    model = ScriptedModel(tok.get_vocab_size(), scripts)
    out = generate_responses(model, tok, RECORDS[:2], CPU, eos_id=eot, max_new_tokens=3, context_length=256)
    assert [o["model_response"] for o in out] == [tok.decode(word * 3).strip()] * 2


def test_batched_responses_equal_one_at_a_time(tok: Tokenizer) -> None:
    torch.manual_seed(0)
    cfg = gpt_config(vocab_size=tok.get_vocab_size(), context_length=64, emb_dim=32, n_heads=4, n_layers=2,
                    drop_rate=0.0)
    model = GPTModel(cfg)
    with torch.no_grad():
        model.out_head.weight.mul_(10.0)  # confident choices: no float near-ties
    eot = eot_id(tok)
    batched = generate_responses(model, tok, RECORDS, CPU, eos_id=eot, max_new_tokens=6, context_length=64,
                                 batch_size=32)
    single = generate_responses(model, tok, RECORDS, CPU, eos_id=eot, max_new_tokens=6, context_length=64,
                                batch_size=1)
    assert batched == single
    assert any(r["model_response"] for r in batched)
    assert not model.training


def test_long_prompts_are_cropped_to_the_context(tok: Tokenizer) -> None:
    eot = eot_id(tok)
    seen: list[int] = []

    class Recorder(nn.Module):
        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            seen.append(idx.size(1))
            logits = torch.zeros(idx.size(0), idx.size(1), tok.get_vocab_size())
            logits[:, :, eot] = 1.0
            return logits

    out = generate_responses(Recorder(), tok, RECORDS[:1], CPU, eos_id=eot, max_new_tokens=5, context_length=16)
    assert seen == [15]  # the last context_length - 1 prompt tokens, one step, EOT at once
    assert out[0]["model_response"] == ""


def test_encode_records(tok: Tokenizer) -> None:
    (ids0, n0), (ids1, _) = encode_records(tok, RECORDS[:2])
    assert tok.decode(ids0) == format_prompt(RECORDS[0]) + "Red."
    assert tok.decode(ids0[n0:]) == "Red."
    assert eot_id(tok) not in ids1


def test_phi3_prompt_layout() -> None:
    with_input = {"instruction": "Name the plural.", "input": "mouse", "output": "mice"}
    assert format_prompt(with_input, "phi3") == "<|user|>\nName the plural.\nmouse\n<|assistant|>:\n"
    no_input = {"instruction": "Say hi.", "input": "", "output": "hi"}
    assert format_prompt(no_input, "phi3") == "<|user|>\nSay hi.\n<|assistant|>:\n"
    with pytest.raises(ValueError, match="unknown prompt style"):
        format_prompt(no_input, "chatml")  # type: ignore[arg-type]


def test_encode_records_follows_the_prompt_style(tok: Tokenizer) -> None:
    (ids, n), = encode_records(tok, RECORDS[:1], "phi3")
    assert tok.decode(ids[:n]) == format_prompt(RECORDS[0], "phi3")
    assert tok.decode(ids[n:]) == RECORDS[0]["output"]
    (alpaca_ids, alpaca_n), = encode_records(tok, RECORDS[:1])
    assert n < alpaca_n  # the chat layout is the shorter prompt


# --- fitting records to allowed_max_length ---------------------------------------------------


LONG = {"instruction": "Give the plural of the word and say it twice.", "input": "cat cat cat cat cat cat cat",
        "output": "cats cats"}


def response_ids(tok: Tokenizer, r: dict[str, str]) -> list[int]:
    return tok.encode(r["output"], add_special_tokens=False).ids


def test_records_that_fit_keep_their_exact_encoding(tok: Tokenizer) -> None:
    fitted = fit_records(tok, RECORDS, max_length=256)
    assert fitted.items == encode_records(tok, RECORDS)
    assert fitted.cut == 0


def test_a_long_record_loses_its_input_first_and_keeps_its_response(tok: Tokenizer) -> None:
    (ids, _), = encode_records(tok, [LONG])
    limit = len(ids) - 3  # a little of the input has to go
    fitted = fit_records(tok, [LONG], max_length=limit)
    (got, got_n), = fitted.items
    assert fitted.cut == 1
    assert len(got) <= limit
    assert got[got_n:] == response_ids(tok, LONG)  # the whole response, so collate scores its end-of-text too
    prompt = tok.decode(got[:got_n])
    assert LONG["instruction"] in prompt and "### Input:\ncat" in prompt
    assert prompt.endswith("### Response:\n") and LONG["input"] not in prompt


def test_then_its_instruction_and_last_its_response_end(tok: Tokenizer) -> None:
    no_input = {**LONG, "input": ""}
    bare = len(prompt_ids(tok, {"instruction": "", "input": ""}))
    fitted = fit_records(tok, [LONG], max_length=bare + len(response_ids(tok, LONG)) + 2)
    (ids, n), = fitted.items
    prompt = tok.decode(ids[:n])
    assert "### Input:" not in prompt and "Give the" in prompt and LONG["instruction"] not in prompt
    assert ids[n:] == response_ids(tok, LONG)
    assert len(prompt_ids(tok, no_input)) > n  # the instruction was cut too
    # No room for the whole response: instruction and input go, then the response's end; one token
    # past the limit, so collate's last target is a response token, not an end-of-text.
    (ids, n), = fit_records(tok, [LONG], max_length=bare + 1).items
    assert n == bare and ids[n:] == response_ids(tok, LONG)[:2] and len(ids) == bare + 2
    _, targets = collate([ids], pad_id=eot_id(tok), allowed_max_length=bare + 1, prompt_lengths=[n])
    assert targets[0, -2:].tolist() == response_ids(tok, LONG)[:2] and (targets[0, :-2] == IGNORE_INDEX).all()


def test_no_room_for_a_response_token_is_an_error_naming_the_prompts_size(tok: Tokenizer) -> None:
    bare = len(prompt_ids(tok, {"instruction": "", "input": ""}))
    short = {"instruction": "Hi.", "input": "", "output": "Yo."}
    (ids, n), = fit_records(tok, [LONG], max_length=bare).items
    assert (n, ids[n:]) == (bare, response_ids(tok, LONG)[:1])  # exactly one response token still fits
    # Issue 19: every record longer than the limit, the loss over no response token NaN.
    with pytest.raises(ValueError) as err:
        fit_records(tok, [LONG, short], max_length=bare - 1, where="data/raw/instructions.json (train split)")
    assert str(err.value) == (
        "data/raw/instructions.json (train split): none of its 2 records can keep a response token within "
        f"finetune_instruct.allowed_max_length {bare - 1}: the alpaca prompt's fixed text alone takes {bare} tokens; "
        "raise allowed_max_length (and model.context_length) or use a shorter prompt_style (phi3)")
    assert fit_records(tok, [], max_length=bare - 1).items == []  # no records, nothing to refuse


def test_long_records_error_names_the_record_in_the_file(tok: Tokenizer) -> None:
    (ids, n), = encode_records(tok, [LONG])
    with pytest.raises(ValueError) as err:
        fit_records(tok, [RECORDS[0], LONG], max_length=len(ids) - 1, long_records="error", where="i.json (val split)",
                    first_index=170)
    assert str(err.value).startswith(
        f"i.json (val split): record 171 has {len(ids)} tokens (prompt {n} + response {len(ids) - n}), more than "
        f"finetune_instruct.allowed_max_length {len(ids) - 1}; raise allowed_max_length")
