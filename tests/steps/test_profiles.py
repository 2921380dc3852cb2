"""Tests for the shipped profiles and `gptpipe profile` (steps/profiles.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipelines.__main__ import main
from steps.config import ConfigError, flat_params, load_params
from steps.profiles import apply_profile, available

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "profiles"
SECTIONS = ["seed", "download", "tokenize", "model", "pretrain", "finetune_classifier", "label_efficiency",
            "finetune_instruct", "evaluate", "tracking"]


@pytest.fixture
def params(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", path)
    return path


def test_the_shipped_profiles() -> None:
    assert available(PROFILES) == ["book", "book-small", "builtin"]


@pytest.mark.parametrize("name", ["book", "book-small", "builtin"])
def test_every_shipped_profile_applies_and_validates(params: Path, name: str) -> None:
    apply_profile(name, params, PROFILES)
    load_params(params)  # strict: would raise on any unknown key or wrong type


def test_the_default_params_are_the_builtin_profile(params: Path) -> None:
    assert apply_profile("builtin", params, PROFILES) == {}


def test_book_profile_is_the_books_setup(params: Path) -> None:
    changed = apply_profile("book", params, PROFILES)
    p = load_params(params)
    assert p.model.context_length == 1024 and p.model.emb_dim == 768
    # The gpt2-small preset: GPT_CONFIG_124M with GPT-2's q/k/v biases, so its weights load too.
    assert p.model.preset == "gpt2-small"
    assert (p.model.n_heads, p.model.n_layers, p.model.drop_rate, p.model.qkv_bias) == (12, 12, 0.1, True)
    assert p.tokenize.kind == "gpt2"
    cls = p.download.classification
    assert (cls.format, cls.header, cls.columns, cls.labels) == ("tsv", False, ["label", "text"], ["ham", "spam"])
    assert cls.source.member == "SMSSpamCollection"
    assert p.download.corpus.source.sha256 == "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f"
    assert p.download.instructions.source.sha256 == "7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944"
    prefs = p.download.preferences
    assert prefs.source.sha256 == "305315abf14f65fa42c01a0877572f832606571c2a7d49f152ac1d758b16756e"
    assert prefs.source.url.endswith("/ch07/04_preference-tuning-with-dpo/instruction-data-with-preference.json")
    assert (prefs.format, prefs.fields.chosen, prefs.fields.rejected) == ("json", "chosen", "rejected")
    fc = p.finetune_classifier
    assert (fc.balance, fc.train_fraction, fc.val_fraction, fc.trainable) == (True, 0.7, 0.1, "last_block")
    assert changed["model.emb_dim"] == (128, 768)
    assert changed["download.corpus.source.kind"] == ("builtin", "url")


def test_switching_back_restores_the_defaults_and_keeps_comments(params: Path) -> None:
    original = flat_params(load_params(params), SECTIONS)
    apply_profile("book-small", params, PROFILES)
    text = params.read_text()
    # Comments of the keys a profile does not replace survive the edit.
    assert text.startswith((ROOT / "params.yaml").read_text().splitlines()[0])
    assert "# Write floats with a dot" in text and "# or random: how much does pretraining buy?" in text
    apply_profile("builtin", params, PROFILES)
    assert flat_params(load_params(params), SECTIONS) == original


def test_unknown_profile_lists_the_available_ones(params: Path) -> None:
    with pytest.raises(ConfigError, match=r"no profile 'gpt5'.*book, book-small, builtin"):
        apply_profile("gpt5", params, PROFILES)


def test_an_invalid_profile_leaves_params_untouched(params: Path, tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "broken.yaml").write_text("model:\n  emb_dim: 100\n  n_heads: 3\n")
    before = params.read_text()
    with pytest.raises(ConfigError, match="divisible"):
        apply_profile("broken", params, profiles)
    assert params.read_text() == before


def test_cli_lists_and_applies(params: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # profiles/ is found relative to the repository root
    assert main(["profile"]) == 0
    assert capsys.readouterr().out.split() == ["book", "book-small", "builtin"]
    assert main(["profile", "book-small", "--params", str(params)]) == 0
    out = capsys.readouterr().out
    assert "model.emb_dim: 128 -> 256" in out and "profile 'book-small' applied" in out
    assert main(["profile", "nope", "--params", str(params)]) == 2


@pytest.mark.parametrize("first", ["book", "book-small", "builtin"])
@pytest.mark.parametrize("second", ["book", "book-small", "builtin"])
def test_switching_there_and_back_leaves_params_byte_identical(params: Path, first: str, second: str) -> None:
    # Any stray byte (a profile's comment left behind, a key it added, `null` written as nothing)
    # changes params.yaml's hash, and DVC reruns every stage that reads it.
    apply_profile(first, params, PROFILES)
    before = params.read_bytes()
    apply_profile(second, params, PROFILES)
    apply_profile(first, params, PROFILES)
    assert params.read_bytes() == before


def test_the_builtin_profile_leaves_the_shipped_params_byte_identical(params: Path) -> None:
    apply_profile("builtin", params, PROFILES)
    assert params.read_bytes() == (ROOT / "params.yaml").read_bytes()


def test_a_profile_keeps_the_comments_of_the_lines_it_changes(params: Path) -> None:
    apply_profile("book", params, PROFILES)
    text = params.read_text()
    # A one-line value changes in place: params.yaml's comment on it stays.
    assert "  preset: gpt2-small" in text and "# tiny | gpt2-small | gpt2-medium" in text
    # A block the profile writes comes with the profile's own comments.
    assert "format: tsv              # read without quote handling" in text
    assert text.count("UCI's zip is rebuilt") == 1


def test_a_value_with_a_hash_inside_quotes_is_kept_whole(params: Path, tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "prompt.yaml").write_text('pretrain:\n  sample_prompt: "Item #1 is"   # the prompt\n')
    apply_profile("prompt", params, profiles)
    assert load_params(params).pretrain.sample_prompt == "Item #1 is"
    assert '  sample_prompt: "Item #1 is"' in params.read_text()
