"""Tests for DPO preference tuning (steps/tasks/preference.py): the loss by hand, its fixed points,
what the masks leave out, and the LoRA reference."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from model.gpt import GPTModel
from model.lora import apply_lora
from steps.tasks.instruction import IGNORE_INDEX
from steps.tasks.preference import (
    adapters_disabled_reference,
    collate_pairs,
    dpo_loss,
    dpo_loss_fn,
    dpo_step,
    frozen_reference,
    pair_stream,
    preference_metrics,
    read_preferences,
    response_logprobs,
)
from steps.training.train import TrainSettings, train
from tests.params import gpt_config

PAD = 0
CFG = gpt_config(vocab_size=50, context_length=32, emb_dim=32, n_heads=2, n_layers=2, drop_rate=0.0)


def tiny_gpt(seed: int = 0) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel(CFG).eval()


def pairs(n: int = 4, seed: int = 3) -> list:
    """n ((chosen ids, prompt length), (rejected ids, prompt length)) of varied lengths, no PAD id."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        prompt = torch.randint(1, 50, (3 + i,), generator=g).tolist()
        chosen = torch.randint(1, 50, (2 + i % 3,), generator=g).tolist()
        rejected = torch.randint(1, 50, (4 - i % 2,), generator=g).tolist()
        out.append(((prompt + chosen, len(prompt)), (prompt + rejected, len(prompt))))
    return out


def test_dpo_loss_of_a_hand_computed_example() -> None:
    # Pair 1: (-1 - -2) - (-1.5 - -1.5) = 1 -> -log σ(0.5) = log(1 + e^-0.5); rewards 0.25 and -0.25.
    # Pair 2: (-3 - -1) - (-2 - -1) = -1 -> -log σ(-0.5) = log(1 + e^0.5); rewards -0.5 and 0.
    out = dpo_loss(torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0]), torch.tensor([-1.5, -2.0]),
                   torch.tensor([-1.5, -1.0]), beta=0.5)
    expected = (math.log(1 + math.exp(-0.5)) + math.log(1 + math.exp(0.5))) / 2
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx([0.25, -0.5])
    assert out.rejected_rewards.tolist() == pytest.approx([-0.25, 0.0])
    assert out.margins.tolist() == pytest.approx([0.5, -0.5])


def test_response_logprobs_mean_and_sum_by_hand() -> None:
    # Vocabulary of 2 with logits (0, ln 3): probabilities 1/4 and 3/4 at every position.
    logits = torch.tensor([0.0, math.log(3)]).expand(1, 3, 2)
    targets = torch.tensor([[IGNORE_INDEX, 1, 0]])
    total = math.log(0.75) + math.log(0.25)
    assert response_logprobs(logits, targets, "sum").item() == pytest.approx(total)
    assert response_logprobs(logits, targets, "mean").item() == pytest.approx(total / 2)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_policy_equal_to_reference_gives_ln2_and_zero_margins(reduction: str) -> None:
    model = tiny_gpt()
    batch = collate_pairs(pairs(), PAD, CFG.context_length)
    out = dpo_step(model, batch, frozen_reference(copy.deepcopy(model), reduction), beta=0.1, reduction=reduction)
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert torch.equal(out.margins, torch.zeros(4))


def test_collate_pairs_scores_only_response_tokens_and_one_end_of_text() -> None:
    batch_pairs = pairs(2)
    inputs, targets = collate_pairs(batch_pairs, PAD, CFG.context_length)
    assert inputs.shape[0] == 4  # chosen rows, then rejected rows
    for row, (ids, n_prompt) in enumerate([c for c, _ in batch_pairs] + [r for _, r in batch_pairs]):
        scored = targets[row][targets[row] != IGNORE_INDEX].tolist()
        assert scored == ids[n_prompt:] + [PAD]  # the response and its end-of-text, nothing of the prompt


def test_logits_at_masked_positions_do_not_change_the_logprobs() -> None:
    inputs, targets = collate_pairs(pairs(), PAD, CFG.context_length)
    logits = tiny_gpt()(inputs)
    noisy = torch.where((targets == IGNORE_INDEX).unsqueeze(-1), torch.randn_like(logits) * 10, logits)
    for reduction in ("mean", "sum"):
        assert torch.equal(response_logprobs(logits, targets, reduction), response_logprobs(noisy, targets, reduction))


def test_padding_does_not_change_the_loss() -> None:
    """A pair batched with a longer one (so padded further) scores as it does alone, and the
    padding's token id does not matter."""
    model, policy = tiny_gpt(0), tiny_gpt(1)
    reference = frozen_reference(copy.deepcopy(model), "mean")
    short, long = pairs(4)[0], pairs(4)[3]
    alone = dpo_step(policy, collate_pairs([short], PAD, 32), reference, 0.1, "mean")
    batch = collate_pairs([short, long], PAD, 32)
    together = dpo_step(policy, batch, reference, 0.1, "mean")
    assert together.margins[0].item() == pytest.approx(alone.margins[0].item(), abs=1e-5)
    inputs, targets = batch
    past_scored = torch.zeros_like(inputs, dtype=torch.bool)
    for row in range(inputs.shape[0]):
        scored = (targets[row] != IGNORE_INDEX).nonzero().squeeze(1)
        past_scored[row, int(scored[-1]) + 1 :] = True  # the padding no scored target reads
    repadded = torch.where(past_scored, torch.full_like(inputs, 7), inputs)
    assert past_scored.any()
    other = dpo_step(policy, (repadded, targets), reference, 0.1, "mean")
    assert other.loss.item() == pytest.approx(together.loss.item(), abs=1e-6)


def test_with_lora_only_adapters_move_and_disabling_them_gives_the_reference_exactly() -> None:
    start = tiny_gpt()
    net = apply_lora(copy.deepcopy(start), rank=4, alpha=8.0, target_modules=["W_query", "W_value", "out_proj"])
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    reference = adapters_disabled_reference(net, "mean")
    batch = collate_pairs(pairs(), PAD, CFG.context_length)
    settings = TrainSettings(max_steps=5, lr=1e-2, eval_interval=5, log_interval=1, weight_decay=0.0)
    result = train(net, iter([batch] * 5), dpo_loss_fn(reference, 0.1, "mean"), settings, torch.device("cpu"))
    moved = {name for name, p in net.named_parameters() if not torch.equal(p, before[name])}
    assert moved and all("lora_" in name for name in moved)
    assert {"train_reward_margin", "train_reward_accuracy"} <= set(result.history[-1])
    inputs, targets = batch
    expected = response_logprobs(start(inputs), targets, "mean")
    assert torch.equal(reference(net, inputs, targets), expected)
    tuned = dpo_step(net, batch, reference, 0.1, "mean")
    assert tuned.margins.mean() > 0 and tuned.loss.item() < math.log(2)  # it learned this batch's preferences
    assert net.training is False  # train() leaves eval mode; the reference restored the mode it found


def test_preference_metrics_count_every_pair() -> None:
    model, policy = tiny_gpt(0), tiny_gpt(1)
    reference = frozen_reference(copy.deepcopy(model), "sum")
    batches = [collate_pairs(pairs(4)[:3], PAD, 32), collate_pairs(pairs(4)[3:], PAD, 32)]
    scores = preference_metrics(policy, batches, reference, 0.1, "sum", torch.device("cpu"))
    whole = dpo_step(policy, collate_pairs(pairs(4), PAD, 32), reference, 0.1, "sum")
    assert scores["loss"] == pytest.approx(whole.loss.item(), abs=1e-5)
    assert scores["reward_margin"] == pytest.approx(whole.margins.mean().item(), abs=1e-5)
    assert scores["reward_accuracy"] == (whole.margins > 0).float().mean().item()


def test_pair_stream_restarts_where_an_uninterrupted_run_is() -> None:
    stream = pair_stream(pairs(5), 2, seed=4, collate_fn=lambda ps: (torch.tensor([len(p[0][0]) for p in ps]),))
    whole = [next(it) for it in [stream(0)] for _ in range(9)]
    resumed = stream(4)
    assert all(torch.equal(next(resumed)[0], b[0]) for b in whole[4:])
    epoch = torch.cat([b[0] for b in whole[:3]])  # 5 pairs in batches of 2: every pair once per epoch
    assert sorted(epoch.tolist()) == sorted(len(p[0][0]) for p in pairs(5))


def test_read_preferences_names_the_record_and_field(tmp_path: Path) -> None:
    path = tmp_path / "preferences.json"
    good = {"instruction": "Say hi.", "input": "", "chosen": "Hi!", "rejected": "Go away."}
    path.write_text(json.dumps([good, {**good, "rejected": 3}]))
    with pytest.raises(ValueError, match=rf"^{path}: record 1: field 'rejected' is missing or not a string"):
        read_preferences(path)
    identical = {**good, "rejected": "Hi!"}  # download keeps these when told to (identical_pairs: keep)
    path.write_text(json.dumps([good, identical]))
    assert read_preferences(path) == [good, identical]
