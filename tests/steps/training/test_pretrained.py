"""Tests for `pretrain.init_from` (steps/training/pretrained.py): local folders, hub downloads through the
cache (from a loopback server), checksum pins, and architecture checks against params.yaml."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from model.config import GPTConfig
from model.presets import PRESETS
from steps.data.fetch import FetchError
from steps.hashing import sha256_file
from steps.training.pretrained import (
    check_architecture,
    initial_model,
    locate_weights,
    preset_of,
    pretrained_model,
)
from tests.params import gpt_config, shipped_params

transformers = pytest.importorskip("transformers")

HF = dict(vocab_size=101, n_positions=32, n_embd=48, n_layer=2, n_head=4)
OURS = gpt_config(vocab_size=101, context_length=32, emb_dim=48, n_heads=4, n_layers=2, drop_rate=0.0, qkv_bias=True)


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**HF)).eval()


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory, reference) -> Path:
    folder = tmp_path_factory.mktemp("gpt2-local")
    reference.save_pretrained(folder)
    return folder


@pytest.fixture
def hub(tmp_path: Path, hf_folder: Path, serve_folder):
    """A loopback server laid out like the hub: /<repo>/resolve/<revision>/<file>."""
    root = tmp_path / "hub"
    shutil.copytree(hf_folder, root / "tiny-gpt2" / "resolve" / "main")
    return serve_folder(root)


def pretrain_cfg(**pretrain):
    return shipped_params({"tokenize": {"kind": "gpt2"}, "pretrain": pretrain}).pretrain


def logits_match(model, reference) -> None:
    idx = torch.randint(0, HF["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(idx), reference(idx).logits, atol=1e-5, rtol=1e-5)


def test_a_local_folder_is_read_in_place_and_its_hash_recorded(hf_folder: Path, tmp_path: Path, reference) -> None:
    files = locate_weights(pretrain_cfg(init_from=str(hf_folder)), tmp_path / "cache")
    assert files.weights == hf_folder / "model.safetensors"
    assert files.provenance == {"source": "folder", "folder": str(hf_folder.resolve()), "weights": "model.safetensors",
                                "sha256": sha256_file(files.weights), "pinned": False}
    assert not (tmp_path / "cache").exists()  # nothing downloaded
    logits_match(pretrained_model(pretrain_cfg(init_from=str(hf_folder)), OURS, files), reference)


def test_a_relative_folder_is_recorded_as_params_name_it(hf_folder: Path, tmp_path: Path, monkeypatch) -> None:
    """init_from.json is a DVC output: two checkouts with the same params and weights write the same
    bytes, so it holds the folder as params.yaml names it, not the checkout's absolute path."""
    recorded = []
    for checkout in ("a", "b"):
        (tmp_path / checkout).mkdir()
        shutil.copytree(hf_folder, tmp_path / checkout / "gpt2-folder")
        monkeypatch.chdir(tmp_path / checkout)
        recorded.append(locate_weights(pretrain_cfg(init_from="gpt2-folder"), tmp_path / "cache").provenance)
    assert recorded[0] == recorded[1] and recorded[0]["folder"] == "gpt2-folder"


def test_a_hub_name_is_downloaded_once_into_the_cache(hub, tmp_path: Path, reference) -> None:
    cfg = pretrain_cfg(init_from="tiny-gpt2", init_url=hub.url + "/{repo}/resolve/{revision}/{file}")
    files = locate_weights(cfg, tmp_path / "cache")
    assert hub.requests == ["/tiny-gpt2/resolve/main/config.json", "/tiny-gpt2/resolve/main/model.safetensors"]
    assert files.provenance["source"] == "hub" and files.provenance["pinned"] is False
    assert files.provenance["url"] == hub.url + "/tiny-gpt2/resolve/main/model.safetensors"
    assert files.provenance["sha256"] == sha256_file(files.weights)
    logits_match(pretrained_model(cfg, OURS, files), reference)

    again = locate_weights(cfg, tmp_path / "cache")
    assert again.weights == files.weights
    assert len(hub.requests) == 2  # served from the cache


def test_a_pinned_hash_is_checked(hub, hf_folder: Path, tmp_path: Path) -> None:
    good = sha256_file(hf_folder / "model.safetensors")
    url = hub.url + "/{repo}/resolve/{revision}/{file}"
    files = locate_weights(pretrain_cfg(init_from="tiny-gpt2", init_url=url, init_sha256=good), tmp_path / "c1")
    assert files.provenance["pinned"] is True
    with pytest.raises(FetchError, match="sha256 mismatch"):
        locate_weights(pretrain_cfg(init_from="tiny-gpt2", init_url=url, init_sha256="0" * 64), tmp_path / "c2")
    with pytest.raises(FetchError, match="sha256 mismatch: pretrain.init_sha256 is 0000"):
        locate_weights(pretrain_cfg(init_from=str(hf_folder), init_sha256="0" * 64), tmp_path / "c3")


def test_a_missing_repository_or_path_is_explained(hub, tmp_path: Path) -> None:
    url = hub.url + "/{repo}/resolve/{revision}/{file}"
    with pytest.raises(FetchError, match="HTTP 404"):
        locate_weights(pretrain_cfg(init_from="no-such-model", init_url=url), tmp_path / "cache")
    with pytest.raises(FetchError, match="neither an existing folder nor a hub name"):
        locate_weights(pretrain_cfg(init_from=str(tmp_path / "missing" / "..." / "x y")), tmp_path / "cache")
    with pytest.raises(FetchError, match=r"only \{repo\}, \{revision\} and \{file\}"):
        locate_weights(pretrain_cfg(init_from="gpt2", init_url="https://mirror/{model}/{file}"), tmp_path / "cache")


def test_an_architecture_other_than_params_is_an_error_naming_both() -> None:
    wanted = gpt_config(vocab_size=101, context_length=32, emb_dim=64, n_heads=4, n_layers=3)
    with pytest.raises(ValueError) as err:
        check_architecture(OURS, wanted, "'tiny-gpt2'")
    message = str(err.value)
    assert "the checkpoint has emb_dim=48, n_layers=2, qkv_bias=True" in message
    assert "params.yaml's model has emb_dim=64, n_layers=3, qkv_bias=False" in message

    small = PRESETS["gpt2-small"].gpt_config()
    with pytest.raises(ValueError, match="set model.preset to gpt2-small"):
        check_architecture(small, PRESETS["tiny"].gpt_config(vocab_size=50257), "'gpt2'")
    with pytest.raises(ValueError, match="the tokenizer's has vocab_size=2048.*tokenize.kind gpt2"):
        check_architecture(small, GPTConfig(**{**small.to_dict(), "vocab_size": 2048}), "'gpt2'")
    check_architecture(small, GPTConfig(**{**small.to_dict(), "drop_rate": 0.0}), "'gpt2'")  # dropout may differ


def test_preset_of_names_the_matching_preset() -> None:
    assert preset_of(PRESETS["gpt2-medium"].gpt_config()) == "gpt2-medium"
    assert preset_of(OURS) is None


def test_initial_model_is_random_without_init_from_and_the_weights_with_it(hf_folder: Path, reference) -> None:
    # Outside a flow (as on torchrun ranks other than 0) the files are located without Prefect,
    # which would otherwise start a server of its own.
    model, provenance = initial_model(pretrain_cfg(), OURS)
    assert provenance is None
    model, provenance = initial_model(pretrain_cfg(init_from=str(hf_folder)), GPTConfig(**{**OURS.to_dict(), "drop_rate": 0.1}))
    assert provenance["source"] == "folder"
    assert model.cfg.drop_rate == 0.1  # dropout from params.yaml, architecture from the checkpoint
    logits_match(model, reference)


@pytest.mark.parametrize("tie, multiple", [(True, 1), (False, 64), (True, 64)])
def test_tied_or_padded_layouts_take_the_same_weights(hf_folder: Path, reference, tie: bool, multiple: int) -> None:
    """model.tie_embeddings / vocab_multiple are our layout choices: GPT-2's weights fill either
    one and give the same logits (padded rows are cut from the output)."""
    wanted = GPTConfig(**{**OURS.to_dict(), "tie_embeddings": tie, "vocab_multiple": multiple})
    model, _ = initial_model(pretrain_cfg(init_from=str(hf_folder)), wanted)
    assert (model.out_head.weight is model.tok_emb.weight) == tie
    assert model.tok_emb.weight.size(0) == (128 if multiple == 64 else 101)
    logits_match(model, reference)


def test_pytorch_init_draws_each_layers_default_as_the_books_model_gets_them() -> None:
    torch.manual_seed(0)
    gpt2, _ = initial_model(pretrain_cfg(), OURS)
    torch.manual_seed(0)
    book, _ = initial_model(pretrain_cfg(init="pytorch"), OURS)
    assert gpt2.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert book.tok_emb.weight.std().item() == pytest.approx(1.0, rel=0.1)  # nn.Embedding: N(0, 1)
    fan_in = OURS.emb_dim
    bound = 1 / fan_in ** 0.5  # nn.Linear: Kaiming-uniform weights and biases within 1/sqrt(fan_in)
    ff_in = book.trf_blocks[0].ff.layers[0]
    assert ff_in.weight.abs().max().item() <= bound and ff_in.weight.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.2)
    assert ff_in.bias.abs().max().item() > 0  # gpt2's init zeroes biases
    assert torch.count_nonzero(gpt2.trf_blocks[0].ff.layers[0].bias) == 0
