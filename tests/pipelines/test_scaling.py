"""`gptpipe scaling plan` on the command line."""

import json

import pytest

from pipelines.__main__ import main
from tests.conftest import ROOT

PARAMS = str(ROOT / "params.yaml")


def test_plan_prints_the_laws_side_by_side(capsys):
    assert main(["scaling", "plan", "--flops", "1e18", "--params", PARAMS]) == 0
    out = capsys.readouterr().out
    for law in ("Kaplan 2020", "Chinchilla 2022 (approach 3)", "Chinchilla refit 2024"):
        assert law in out
    assert "max_steps" in out and "Compute budget 1e+18 FLOPs" in out


def test_plan_from_gpu_hours_as_json(capsys):
    assert main(["scaling", "plan", "--gpu-hours", "2", "--gpu", "a100", "--mfu", "0.5", "--json",
                 "--params", PARAMS]) == 0
    assert json.loads(capsys.readouterr().out)["flops"] == 2 * 3600 * 312e12 * 0.5


def test_a_bad_gpu_is_one_line_and_exit_2(capsys):
    assert main(["scaling", "plan", "--gpu-hours", "2", "--gpu", "abacus", "--params", PARAMS]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gptpipe scaling: unknown GPU 'abacus'") and "\n" not in err


@pytest.fixture
def tiny_project(tmp_path, monkeypatch, prefect_api):
    """A scratch project: tiny params, a 300-token BPE and the built-in corpus's tokens, MLflow's store
    under it."""
    import numpy as np
    import yaml

    from steps import layout
    from steps.data.builtin_data import generate_corpus
    from steps.tokenization.tokenizer import train_bpe
    from tests.params import merged

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = merged({"tokenize": {"vocab_size": 300}, "model": {"context_length": 64},
                     "pretrain": {"batch_size": 4, "eval_batches": 2, "warmup_steps": 0},
                     "finetune_classifier": {"max_length": 64}, "finetune_instruct": {"allowed_max_length": 64},
                     "finetune_preference": {"allowed_max_length": 64},
                     "tracking": {"experiment": "sweep-test"}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    layout.TOKENS.mkdir(parents=True)
    text = generate_corpus(seed=1, target_bytes=120_000)
    tok = train_bpe([text], vocab_size=300)
    tok.save(str(layout.TOKENIZER))
    ids = np.array(tok.encode(text).ids, dtype=np.uint16)
    split = len(ids) * 9 // 10
    ids[:split].tofile(layout.TRAIN_BIN)
    ids[split:].tofile(layout.VAL_BIN)
    return tmp_path


def test_a_tiny_sweep_runs_resumes_and_fits(tiny_project, capsys):
    from steps.scaling.sweep import STAGE
    from steps.tracking.runs import fetch_runs

    sweep = ["scaling", "sweep", "--budgets", "2e9,5e9", "--sizes", "3", "--min-steps", "2"]
    assert main(sweep) == 0
    runs = fetch_runs("sweep-test", stage=STAGE)
    assert len(runs) == 5  # 2e9: 1 and 2 layers; 5e9: 1, 2 and 3 (3 layers at 2e9 would train 1 step)
    assert {r.params["n_layers"] for r in runs} == {"1", "2", "3"}
    for r in runs:
        assert r.metrics["tokens"] == int(r.params["max_steps"]) * 4 * 64
        assert r.metrics["flops"] == pytest.approx(r.metrics["budget_flops"], rel=0.35)  # a step is coarse here
        assert 0 < r.metrics["val_loss"] < 10

    capsys.readouterr()
    assert main(sweep) == 0  # every point finished: nothing trains again
    assert len(fetch_runs("sweep-test", stage=STAGE)) == 5

    assert main(["scaling", "fit", "--samples", "10", "--target-flops", "1e12"]) == 0
    out = capsys.readouterr().out
    assert "fitted to 5 runs" in out and "for 1e+12 FLOPs: N_opt" in out and "200x the sweep's largest" in out
    report = (tiny_project / "reports" / "scaling" / "fit.md").read_text()
    assert "| alpha |" in report and "Chinchilla refit 2024" in report
    figures = json.loads((tiny_project / "reports" / "scaling" / "fit.json").read_text())
    assert len(figures["runs"]) == 5 and figures["target"]["stretch"] == pytest.approx(200)
    assert (tiny_project / "reports" / "scaling" / "fit.png").stat().st_size > 10_000
    (fit_run,) = fetch_runs("sweep-test", stage="scaling_fit")
    assert set(fit_run.metrics) >= {"E", "A", "B", "alpha", "beta", "a"}


def test_a_sweep_without_tokens_says_to_tokenize_first(tmp_path, monkeypatch, prefect_api, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    assert main(["scaling", "sweep"]) == 2
    assert "run `dvc repro tokenize` first" in capsys.readouterr().err
