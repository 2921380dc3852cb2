"""Tests for model folders: safetensors weights + config.json (+ training state)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from model.checkpoint import (
    CONFIG,
    TRAINING_STATE,
    WEIGHTS,
    build_model,
    load_model,
    load_training_state,
    read_training_step,
    read_config,
    save_model,
    save_training_state,
)
from model.gpt import GPTModel
from model.heads import attach_classifier_head
from tests.params import gpt_config

CFG = gpt_config(vocab_size=64, context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0, qkv_bias=True)


def make_model(seed: int = 0) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel(CFG).eval()


def sample_ids() -> torch.Tensor:
    return torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))


def test_lm_round_trip(tmp_path: Path) -> None:
    model = make_model()
    save_model(tmp_path / "m", model)
    loaded, head = load_model(tmp_path / "m")
    assert head == {"kind": "lm"}
    assert loaded.cfg == CFG
    assert not loaded.training
    ids = sample_ids()
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    # A differently seeded model really differs (the check above is not vacuous).
    with torch.no_grad():
        assert not torch.allclose(make_model(seed=1)(ids), model(ids))


def test_classifier_round_trip(tmp_path: Path) -> None:
    model = attach_classifier_head(make_model(), 3)
    with torch.no_grad():
        model.out_head.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    head = {"kind": "classifier", "labels": ["a", "b", "c"]}
    save_model(tmp_path, model, head)
    loaded, loaded_head = load_model(tmp_path)
    assert loaded_head == head
    assert loaded.out_head.out_features == 3
    ids = sample_ids()
    with torch.no_grad():
        out = loaded(ids)
        assert out.shape == (2, 10, 3)
        assert torch.equal(out, model(ids))


def test_folder_contents_and_no_temp_files(tmp_path: Path) -> None:
    folder = tmp_path / "nested" / "model"
    save_model(folder, make_model())
    save_model(folder, make_model(seed=2))  # overwrite in place
    assert sorted(p.name for p in folder.iterdir()) == sorted([WEIGHTS, CONFIG])
    config = json.loads((folder / CONFIG).read_text())
    assert config == {"gpt": CFG.to_dict(), "head": {"kind": "lm"}}
    # The second save replaced the first.
    loaded, _ = load_model(folder)
    assert torch.equal(loaded.tok_emb.weight, make_model(seed=2).tok_emb.weight)


def test_non_contiguous_parameter_is_saved(tmp_path: Path) -> None:
    # A non-contiguous parameter (e.g. after a transpose) must still save.
    model = make_model()
    model.out_head.weight = torch.nn.Parameter(model.out_head.weight.detach().t().contiguous().t())
    assert not model.out_head.weight.is_contiguous()
    save_model(tmp_path, model)
    loaded, _ = load_model(tmp_path)
    assert torch.equal(loaded.out_head.weight, model.out_head.weight)


def test_missing_config_raises_helpful_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.json not found.*model folder"):
        load_model(tmp_path)


@pytest.mark.parametrize(
    "payload",
    [
        {"head": {"kind": "lm"}},  # no "gpt" section
        {"gpt": {**CFG.to_dict(), "bogus": 1}},  # unknown field
        {"gpt": {**CFG.to_dict(), "emb_dim": 30}},  # invalid architecture
        {"gpt": {"vocab_size": 64}},  # missing fields
        {"gpt": [1, 2, 3]},  # wrong type
    ],
)
def test_corrupt_config_raises_value_error_naming_path(tmp_path: Path, payload: dict) -> None:
    (tmp_path / CONFIG).write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="invalid model config") as info:
        read_config(tmp_path)
    assert str(tmp_path / CONFIG) in str(info.value)


@pytest.mark.parametrize("text", ['{"gpt": {"vocab_size": 6', "", "not json"])
def test_unparsable_config_raises_value_error(tmp_path: Path, text: str) -> None:
    (tmp_path / CONFIG).write_text(text)
    with pytest.raises(ValueError):
        load_model(tmp_path)


def test_unparsable_config_error_names_path(tmp_path: Path) -> None:
    (tmp_path / CONFIG).write_text('{"gpt": {"vocab_size": 6')  # e.g. a truncated copy
    with pytest.raises(ValueError) as info:
        read_config(tmp_path)
    assert str(tmp_path / CONFIG) in str(info.value)


def test_config_without_head_defaults_to_lm(tmp_path: Path) -> None:
    (tmp_path / CONFIG).write_text(json.dumps({"gpt": CFG.to_dict()}))
    cfg, head = read_config(tmp_path)
    assert cfg == CFG and head == {"kind": "lm"}


def test_build_model_unknown_head() -> None:
    with pytest.raises(ValueError, match="unknown head kind 'regression'"):
        build_model(CFG, {"kind": "regression"})
    assert build_model(CFG, {"kind": "classifier", "labels": ["x", "y"]}).out_head.out_features == 2


def test_weights_not_matching_config_fail_to_load(tmp_path: Path) -> None:
    save_model(tmp_path, make_model())
    other = {**CFG.to_dict(), "emb_dim": 64}
    (tmp_path / CONFIG).write_text(json.dumps({"gpt": other, "head": {"kind": "lm"}}))
    with pytest.raises(RuntimeError):
        load_model(tmp_path)


def test_training_state_round_trip(tmp_path: Path) -> None:
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    for _ in range(2):
        loss = model(sample_ids()).logsumexp(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": 2, "tokens": 40}
    save_training_state(tmp_path, state)
    assert sorted(p.name for p in tmp_path.iterdir()) == [TRAINING_STATE]

    loaded = load_training_state(tmp_path)
    assert loaded["step"] == 2 and loaded["tokens"] == 40
    fresh = torch.optim.AdamW(make_model().parameters(), lr=1e-3)
    fresh.load_state_dict(loaded["optimizer"])
    assert fresh.state_dict()["state"].keys() == opt.state_dict()["state"].keys()
    for key, s in opt.state_dict()["state"].items():
        assert torch.equal(fresh.state_dict()["state"][key]["exp_avg"], s["exp_avg"])
        assert torch.equal(fresh.state_dict()["state"][key]["exp_avg_sq"], s["exp_avg_sq"])
    assert loaded["scheduler"]["last_epoch"] == 2


class Custom:
    """A module-level class: picklable, but no part of a training state."""


def test_training_state_refuses_arbitrary_objects_when_saving(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="training state /thing: cannot store a Custom"):
        save_training_state(tmp_path, {"step": 1, "thing": Custom()})
    assert list(tmp_path.iterdir()) == []


def test_failed_training_state_save_leaves_the_old_file(tmp_path: Path) -> None:
    save_training_state(tmp_path, {"step": 1})
    with pytest.raises(TypeError, match="/fn: cannot store a function"):
        save_training_state(tmp_path, {"step": 2, "fn": lambda: None})
    assert sorted(p.name for p in tmp_path.iterdir()) == [TRAINING_STATE]
    assert load_training_state(tmp_path) == {"step": 1}


def test_training_state_keeps_types(tmp_path: Path) -> None:
    """What an optimizer's state_dict needs back exactly: integer keys, tuples, 0-d tensors, and
    floats JSON has no numbers for."""
    state = {"ints": {0: torch.tensor(3.0), 7: {"x": (0.9, 0.95)}}, "none": None, "flag": True,
             "odd": [float("inf"), float("-inf")], "rng": torch.arange(5, dtype=torch.uint8), "empty": {}}
    save_training_state(tmp_path, state)
    loaded = load_training_state(tmp_path)
    assert loaded.keys() == state.keys() and loaded["ints"].keys() == {0, 7}
    assert loaded["ints"][7] == {"x": (0.9, 0.95)} and loaded["odd"] == [float("inf"), float("-inf")]
    assert torch.equal(loaded["ints"][0], state["ints"][0]) and loaded["ints"][0].shape == ()
    assert torch.equal(loaded["rng"], state["rng"]) and loaded["rng"].dtype == torch.uint8
    assert (loaded["none"], loaded["flag"], loaded["empty"]) == (None, True, {})
    save_training_state(tmp_path, {"nan": float("nan")})
    assert math.isnan(load_training_state(tmp_path)["nan"])


def test_training_state_bytes_depend_on_the_state_only(tmp_path: Path) -> None:
    """No temporary file name, serialization id or date in the file: the same state gives the same
    bytes, whichever folder and whenever it is written (DVC then sees an unchanged output)."""
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(sample_ids()).mean().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "step": 1, "tokens": 20}
    for name in ("a", "b"):
        save_training_state(tmp_path / name, state)
    assert (tmp_path / "a" / TRAINING_STATE).read_bytes() == (tmp_path / "b" / TRAINING_STATE).read_bytes()


def test_a_file_that_is_no_training_state_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / TRAINING_STATE), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not a training state written by gptpipe"):
        load_training_state(tmp_path)


def test_tied_padded_model_round_trip_stores_the_matrix_once(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    torch.manual_seed(0)
    cfg = gpt_config(vocab_size=50, context_length=16, emb_dim=32, n_heads=4, n_layers=2,
                    tie_embeddings=True, vocab_multiple=64)
    model = GPTModel(cfg).eval()
    save_model(tmp_path, model)
    assert "out_head.weight" not in load_file(str(tmp_path / WEIGHTS))  # stored once, under tok_emb
    loaded, _ = load_model(tmp_path)
    assert loaded.cfg == cfg
    assert loaded.out_head.weight is loaded.tok_emb.weight  # still tied after loading
    ids = sample_ids() % 50  # real token ids only
    torch.testing.assert_close(loaded(ids), model(ids))


def test_the_training_step_is_read_without_the_tensors(tmp_path: Path) -> None:
    save_training_state(tmp_path, {"step": 90, "optimizer": {"state": {0: {"exp_avg": torch.zeros(4)}}}})
    assert read_training_step(tmp_path) == 90
    save_training_state(tmp_path, {"optimizer": {}})
    with pytest.raises(ValueError, match="no training step recorded"):
        read_training_step(tmp_path)
