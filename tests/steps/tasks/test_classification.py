"""Tests for the SMS-style classification data and helpers (steps/tasks/classification.py)."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model.checkpoint import save_model
from model.gpt import GPTModel
from model.heads import attach_classifier_head
from steps.tasks.classification import (
    Example,
    class_logits,
    classification_loss,
    collate,
    encode_examples,
    initial_classifier,
    label_names,
    loader,
    min_examples,
    nested_subsets,
    predict,
    read_labeled,
    read_labels,
    split_examples,
    write_labeled,
)
from steps.tokenization.tokenizer import train_bpe
from tests.params import gpt_config

CPU = torch.device("cpu")
CFG = gpt_config(vocab_size=64, context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)


def write(tmp_path: Path, text: str, name: str = "sms.tsv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def book_like(n_ham: int = 4825, n_spam: int = 747) -> list[Example]:
    examples = [Example("ham", f"ham message {i}") for i in range(n_ham)]
    examples += [Example("spam", f"spam message {i}") for i in range(n_spam)]
    random.Random(0).shuffle(examples)
    return examples


# --- reading ------------------------------------------------------------------------------


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    examples = [Example("spam", '"WIN" now £100\twith a tab'), Example("ham", "see you at 5 ☺\nbye")]
    write_labeled(tmp_path / "out" / "test.jsonl", examples)
    assert read_labeled(tmp_path / "out" / "test.jsonl") == examples


def test_read_errors_name_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, '{"label": "ham", "text": "a"}\n{"text": "b"}\n', "c.jsonl")
    with pytest.raises(ValueError, match=rf"{path}:2: expected"):
        read_labeled(path)
    empty = write(tmp_path, "\n", "e.jsonl")
    with pytest.raises(ValueError, match=rf"{empty}: no examples"):
        read_labeled(empty)


def test_read_labels(tmp_path: Path) -> None:
    path = write(tmp_path, '["ham", "spam"]', "labels.json")
    assert read_labels(path) == ["ham", "spam"]
    with pytest.raises(ValueError, match="at least two label names"):
        read_labels(write(tmp_path, '["ham"]', "one.json"))


def test_label_names_sorted() -> None:
    examples = [Example("spam", "a"), Example("ham", "b"), Example("spam", "c")]
    assert label_names(examples) == ["ham", "spam"]
    assert label_names([Example("b", "x"), Example("c", "y"), Example("a", "z")]) == ["a", "b", "c"]


# --- splitting ----------------------------------------------------------------------------


def test_split_balanced_like_the_book() -> None:
    splits = split_examples(book_like(), seed=123, train_fraction=0.7, val_fraction=0.1, balance=True)
    pool = splits["train"] + splits["val"] + splits["test"]
    assert Counter(e.label for e in pool) == {"ham": 747, "spam": 747}
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (1045, 149, 300)
    assert len(set(pool)) == len(pool)  # no example twice
    # Shuffled: both classes in every split.
    for part in splits.values():
        assert {e.label for e in part} == {"ham", "spam"}


def test_split_is_the_books_pandas_code_record_for_record() -> None:
    """The book: ham.sample(n_spam, random_state=123), concat with spam, sample(frac=1,
    random_state=123), then 70/10/20. Our NumPy version must pick the very same records."""
    pd = pytest.importorskip("pandas")
    examples = book_like(400, 60)
    df = pd.DataFrame({"Label": [e.label for e in examples], "Text": [e.text for e in examples]})
    num_spam = int((df["Label"] == "spam").sum())
    ham_subset = df[df["Label"] == "ham"].sample(num_spam, random_state=123)
    balanced = pd.concat([ham_subset, df[df["Label"] == "spam"]])
    shuffled = balanced.sample(frac=1, random_state=123).reset_index(drop=True)
    train_end = int(len(shuffled) * 0.7)
    val_end = train_end + int(len(shuffled) * 0.1)
    expected = {"train": shuffled[:train_end], "val": shuffled[train_end:val_end], "test": shuffled[val_end:]}

    splits = split_examples(examples, seed=123, train_fraction=0.7, val_fraction=0.1, balance=True)
    for name, frame in expected.items():
        assert [e.text for e in splits[name]] == frame["Text"].tolist(), name


def test_split_unbalanced_keeps_everything() -> None:
    examples = book_like(100, 30)
    splits = split_examples(examples, seed=0, train_fraction=0.5, val_fraction=0.25, balance=False)
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (65, 32, 33)
    assert sorted(splits["train"] + splits["val"] + splits["test"], key=lambda e: e.text) == sorted(
        examples, key=lambda e: e.text
    )


def test_split_deterministic_by_seed() -> None:
    examples = book_like(200, 50)
    a = split_examples(examples, seed=5, train_fraction=0.7, val_fraction=0.1, balance=True)
    b = split_examples(examples, seed=5, train_fraction=0.7, val_fraction=0.1, balance=True)
    c = split_examples(examples, seed=6, train_fraction=0.7, val_fraction=0.1, balance=True)
    assert a == b
    assert a["train"] != c["train"]


# --- batching -----------------------------------------------------------------------------


def test_collate_right_pads() -> None:
    ids, lengths, labels = collate([([1, 2, 3], 0), ([4], 1), ([5, 6], 1)], pad_id=9)
    assert ids.tolist() == [[1, 2, 3], [4, 9, 9], [5, 6, 9]]
    assert lengths.tolist() == [3, 1, 2]
    assert labels.tolist() == [0, 1, 1]
    assert ids.dtype == lengths.dtype == labels.dtype == torch.long


def test_encode_examples_truncates_and_maps_labels() -> None:
    tok = train_bpe(["hello world " * 5, "spam offer now"] * 20, vocab_size=280)
    examples = [Example("spam", "hello world hello world hello world"), Example("ham", "hi")]
    encoded, truncated = encode_examples(tok, examples, ["ham", "spam"], max_length=3)
    assert [label for _, label in encoded] == [1, 0]
    assert len(encoded[0][0]) == 3
    assert truncated == 1
    assert encoded[0][0] == tok.encode(examples[0].text, add_special_tokens=False).ids[:3]
    with pytest.raises(ValueError, match="record 0: label 'spam' is not one of the model's labels"):
        encode_examples(tok, examples, ["ham", "other"], max_length=3)


def test_encode_examples_can_refuse_long_records() -> None:
    tok = train_bpe(["hello world " * 5, "spam offer now"] * 20, vocab_size=280)
    examples = [Example("ham", "hi"), Example("spam", "hello world hello world hello world")]
    with pytest.raises(ValueError, match=r"sms.jsonl: record 1 has \d+ tokens, more than max_length 3"):
        encode_examples(tok, examples, ["ham", "spam"], max_length=3, long_records="error", where="sms.jsonl")
    _, truncated = encode_examples(tok, examples, ["ham", "spam"], max_length=100, long_records="error")
    assert truncated == 0


def test_loader_shuffles_reproducibly() -> None:
    items = [([i + 1], i % 2) for i in range(10)]
    first = [b[0].flatten().tolist() for b in loader(items, 4, pad_id=0, shuffle=True, seed=1)]
    again = [b[0].flatten().tolist() for b in loader(items, 4, pad_id=0, shuffle=True, seed=1)]
    plain = [b[0].flatten().tolist() for b in loader(items, 4, pad_id=0, shuffle=False, seed=1)]
    assert first == again
    assert plain == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    assert first != plain
    assert sorted(sum(first, [])) == list(range(1, 11))


# --- model side ---------------------------------------------------------------------------


@pytest.fixture
def tiny_classifier() -> GPTModel:
    torch.manual_seed(0)
    return attach_classifier_head(GPTModel(CFG), 2).eval()


def items() -> list[tuple[list[int], int]]:
    gen = torch.Generator().manual_seed(2)
    return [(torch.randint(0, 63, (n,), generator=gen).tolist(), n % 2) for n in (3, 7, 5, 10, 1)]


def test_classification_loss(tiny_classifier: GPTModel) -> None:
    batch = collate(items(), pad_id=63)
    loss, n = classification_loss(tiny_classifier, batch)
    assert n == 3 + 7 + 5 + 10 + 1
    with torch.no_grad():
        per_row = torch.stack([tiny_classifier(torch.tensor([ids]))[0, -1] for ids, _ in items()])
    expected = F.cross_entropy(per_row, batch[2])
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(class_logits(tiny_classifier, batch), per_row, rtol=0, atol=1e-5)
    loss.backward()
    assert tiny_classifier.out_head.weight.grad is not None


def test_predict(tiny_classifier: GPTModel) -> None:
    dl = loader(items(), batch_size=2, pad_id=63, shuffle=False, seed=0)
    preds, refs, mean = predict(tiny_classifier, dl, CPU)
    assert refs == [1, 1, 1, 0, 1]
    with torch.no_grad():
        per_row = torch.stack([tiny_classifier(torch.tensor([ids]))[0, -1] for ids, _ in items()])
    assert preds == per_row.argmax(-1).tolist()
    assert mean == pytest.approx(F.cross_entropy(per_row, torch.tensor(refs)).item(), abs=1e-5)


def test_predict_learns_a_separable_task() -> None:
    # Label = whether the message starts with token 1: a few steps make predictions right.
    torch.manual_seed(0)
    model = attach_classifier_head(GPTModel(CFG), 2)
    data = [([1 + 2 * (i % 2), 5, 6, 7][: 2 + i % 3], i % 2) for i in range(16)]
    batch = collate(data, pad_id=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(40):
        loss, _ = classification_loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    preds, refs, mean = predict(model.eval(), loader(data, 8, 0, shuffle=False, seed=0), CPU)
    assert preds == refs
    assert mean < 0.1


# --- starting point -------------------------------------------------------------------------


@pytest.fixture
def pretrained(tmp_path: Path) -> Path:
    torch.manual_seed(42)
    save_model(tmp_path / "pretrain", GPTModel(CFG))
    return tmp_path / "pretrain"


def body(model: GPTModel) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("out_head")}


def test_initial_classifier_pretrained(pretrained: Path) -> None:
    torch.manual_seed(42)
    reference = GPTModel(CFG)
    a = initial_classifier(pretrained, ["ham", "spam"], init="pretrained", seed=1)
    b = initial_classifier(pretrained, ["ham", "spam"], init="pretrained", seed=1)
    c = initial_classifier(pretrained, ["ham", "spam"], init="pretrained", seed=2)
    assert a.out_head.out_features == 2
    for k, v in body(a).items():
        assert torch.equal(v, reference.state_dict()[k]), k
    assert torch.equal(a.out_head.weight, b.out_head.weight)  # head reproducible for a seed
    assert not torch.equal(a.out_head.weight, c.out_head.weight)


def test_a_llama_classifier_can_start_from_random_weights(tmp_path: Path) -> None:
    from model.llama import LlamaModel
    from tests.model.test_llama import llama_config

    save_model(tmp_path / "llama", LlamaModel(llama_config()))
    model = initial_classifier(tmp_path / "llama", ["a", "b"], init="random", seed=1)
    assert isinstance(model, LlamaModel) and model.out_head.out_features == 2


def test_initial_classifier_random(pretrained: Path) -> None:
    pre = initial_classifier(pretrained, ["a", "b", "c"], init="pretrained", seed=1)
    r1 = initial_classifier(pretrained, ["a", "b", "c"], init="random", seed=1)
    r2 = initial_classifier(pretrained, ["a", "b", "c"], init="random", seed=1)
    r3 = initial_classifier(pretrained, ["a", "b", "c"], init="random", seed=3)
    assert r1.cfg == pre.cfg
    assert r1.out_head.out_features == 3
    assert not torch.equal(body(r1)["tok_emb.weight"], body(pre)["tok_emb.weight"])
    for k in body(r1):
        assert torch.equal(r1.state_dict()[k], r2.state_dict()[k]), k
    assert torch.equal(r1.out_head.weight, r2.out_head.weight)
    assert not torch.equal(r1.tok_emb.weight, r3.tok_emb.weight)


def test_initial_classifier_unknown_init(pretrained: Path) -> None:
    with pytest.raises(ValueError, match="unknown init 'scratch'"):
        initial_classifier(pretrained, ["ham", "spam"], init="scratch", seed=0)


def test_class_balanced_loader_draws_labels_equally_often() -> None:
    # 90 of label 0, 10 of label 1: plain shuffling shows label 1 in ~10 % of draws.
    items = [([1, 2, 3], 0)] * 90 + [([4, 5], 1)] * 10
    def label_share(seed: int) -> float:
        dl = loader(items, batch_size=50, pad_id=0, shuffle=True, seed=seed, class_balanced=True)
        labels = torch.cat([batch[2] for _ in range(20) for batch in dl])
        return labels.float().mean().item()
    assert 0.4 < label_share(0) < 0.6
    dl = loader(items, batch_size=50, pad_id=0, shuffle=True, seed=0, class_balanced=True)
    again = loader(items, batch_size=50, pad_id=0, shuffle=True, seed=0, class_balanced=True)
    assert [b[2].tolist() for b in dl] == [b[2].tolist() for b in again]  # seeded
    assert sum(len(b[2]) for b in dl) == len(items)  # an epoch is still len(items) draws


def test_pooling_reaches_the_loss() -> None:
    torch.manual_seed(0)
    cfg = gpt_config(vocab_size=50, context_length=12, emb_dim=16, n_heads=2, n_layers=1, drop_rate=0.0)
    model = attach_classifier_head(GPTModel(cfg), 2).eval()
    batch = collate([([1, 2, 3], 0), ([4, 5, 6, 7, 8], 1)], pad_id=9)
    losses = {p: classification_loss(model, batch, pooling=p)[0].item() for p in ("last", "last_non_pad", "mean")}
    assert len(set(losses.values())) == 3


def test_predict_on_an_empty_split_is_an_error_not_a_zero_loss(tiny_classifier: GPTModel) -> None:
    # Issue 19: an empty validation split ended in a bare ZeroDivisionError (and the loss read 0.0).
    with pytest.raises(ValueError, match="no examples to predict: the split is empty"):
        predict(tiny_classifier, loader([], 8, 0, shuffle=False, seed=0), CPU)


@pytest.mark.parametrize(("train", "val", "fewest"), [(0.7, 0.1, 10), (0.7, 0.15, 7), (0.5, 0.25, 4)])
def test_min_examples_is_the_fewest_that_leave_every_split_non_empty(train: float, val: float, fewest: int) -> None:
    assert min_examples(train, val) == fewest
    examples = [Example("ham" if i % 2 else "spam", f"m{i}") for i in range(fewest)]
    assert all(split_examples(examples, 0, train, val, balance=False).values())
    assert not all(split_examples(examples[:-1], 0, train, val, balance=False).values())


# --- label-efficiency subsets -------------------------------------------------------------


def test_nested_subsets_are_stratified_with_every_label_kept() -> None:
    train = book_like(n_ham=900, n_spam=100)
    subsets = nested_subsets(train, [0.001, 0.01, 0.05, 0.5, 1.0], seed=3)
    counts = [Counter(e.label for e in subset) for subset in subsets]
    # max(1, round(f x n)) per label: 0.001 x 100 = 0.1 rounds to 0, and the label keeps 1 anyway.
    assert counts == [Counter(ham=1, spam=1), Counter(ham=9, spam=1), Counter(ham=45, spam=5),
                      Counter(ham=450, spam=50), Counter(ham=900, spam=100)]
    assert subsets[-1] == train  # the whole split, in its order


def test_nested_subsets_nest_and_keep_the_splits_order() -> None:
    train = book_like(n_ham=300, n_spam=60)
    subsets = nested_subsets(train, [0.05, 0.2, 0.6], seed=1)
    position = {id(e): i for i, e in enumerate(train)}
    for smaller, larger in zip(subsets, subsets[1:]):
        assert {id(e) for e in smaller} < {id(e) for e in larger}
    for subset in subsets:
        assert [position[id(e)] for e in subset] == sorted(position[id(e)] for e in subset)


def test_nested_subsets_depend_on_the_seed_only() -> None:
    train = book_like(n_ham=200, n_spam=50)
    first = nested_subsets(train, [0.1, 0.3], seed=7)
    assert nested_subsets(train, [0.1, 0.3], seed=7) == first
    assert nested_subsets(train, [0.1], seed=7)[0] == first[0]  # a point's subset whatever the other fractions
    assert nested_subsets(train, [0.1, 0.3], seed=8) != first
    # A label's draw does not depend on the other labels' records.
    spam_only = [e for e in train if e.label == "spam"]
    assert [e for e in first[0] if e.label == "spam"] == nested_subsets(spam_only, [0.1], seed=7)[0]


def test_nested_subsets_refuse_a_fraction_outside_zero_to_one() -> None:
    with pytest.raises(ValueError, match="above 0 and at most 1, got 1.5"):
        nested_subsets(book_like(10, 10), [0.5, 1.5], seed=0)
