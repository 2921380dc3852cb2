"""The `gptpipe` command line: a table from stage names to flows."""

import importlib

import pytest
import yaml

from pipelines import STAGES
from pipelines.__main__ import main
from pipelines.cli import RANK_ENTRIES, run_flow, torchrun_relaunch
from tests.params import gpt_config, merged


def test_every_stage_name_points_at_a_prefect_flow():
    from prefect import Flow

    for stage, (module, name) in STAGES.items():
        flow = getattr(importlib.import_module(module), name)
        assert isinstance(flow, Flow)
        assert flow.name == stage


def test_stages_command_lists_them(capsys):
    assert main(["stages"]) == 0
    assert capsys.readouterr().out.split() == list(STAGES)


def test_a_bad_params_file_is_a_clear_error_not_a_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("pretrain:\n  lr: 4e-4\n")
    assert main(["pretrain", "--params", "params.yaml"]) == 2
    err = capsys.readouterr().err
    assert "pretrain.lr" in err and "params.yaml" in err


def test_pretrain_with_several_processes_relaunches_itself_under_torchrun(tmp_path, monkeypatch):
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # a team's server: none is started
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(merged({"pretrain": {"nproc": 2}})))
    calls = []
    monkeypatch.setattr("subprocess.call", lambda cmd: calls.append(cmd) or 7)
    assert main(["pretrain", "--params", "p.yaml"]) == 7  # torchrun's exit status is the command's
    (command,) = calls
    assert command[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pipelines",
                           "pretrain", "--params", "p.yaml"]


def test_no_relaunch_for_one_process_other_stages_or_inside_torchrun(monkeypatch):
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert torchrun_relaunch("pretrain", "params.yaml", 1) is None
    assert torchrun_relaunch("finetune_classifier", "params.yaml", 4) is None
    assert torchrun_relaunch("pretrain", "params.yaml", 4) is not None
    monkeypatch.setenv("WORLD_SIZE", "8")  # a torchrun launch of the user's own (e.g. several nodes)
    assert torchrun_relaunch("pretrain", "params.yaml", 4) is None


def test_ranks_other_than_0_run_the_rank_entry_not_the_flow(monkeypatch):
    module = importlib.import_module(RANK_ENTRIES["pretrain"][0])
    ran = []
    monkeypatch.setattr(module, RANK_ENTRIES["pretrain"][1], lambda params_path: ran.append(params_path))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert run_flow("pretrain", "p.yaml") == {}
    assert ran == ["p.yaml"]


def test_unknown_stage_is_rejected():
    with pytest.raises(SystemExit):
        main(["pretrian"])


def compare(out, *args: str) -> int:
    return main(["compare", "--experiment", "cmp", "--out", str(out), *args])


def best_row(markdown: str) -> str:
    (row,) = [line for line in markdown.splitlines() if "★ best" in line]
    return row


def test_compare_writes_the_report_and_prints_the_table(mlflow_store, tmp_path, capsys):
    out = tmp_path / "compare"
    assert compare(out, "--stage", "finetune_classifier") == 0
    printed = capsys.readouterr().out
    assert "| run | id |" in printed and "cls-lora" in printed and "cls-head" in printed
    for name in ("compare.md", "compare.html", "curves.png", "accuracy.png"):
        assert (out / name).is_file() and str(out / name) in printed
    md = (out / "compare.md").read_text()
    assert "cls-block" in best_row(md)  # highest test_accuracy
    assert "Best by `test_accuracy` (higher is better)" in md
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files behind


def test_compare_best_by_a_loss_minimizes(mlflow_store, tmp_path, capsys):
    assert compare(tmp_path, "--stage", "finetune_classifier", "--best", "val_loss") == 0
    assert "cls-lora" in best_row((tmp_path / "compare.md").read_text())
    assert compare(tmp_path, "--stage", "finetune_classifier", "--best", "val_loss", "--maximize") == 0
    assert "cls-head" in best_row((tmp_path / "compare.md").read_text())
    assert compare(tmp_path, "--stage", "finetune_classifier", "--best", "test_accuracy", "--minimize") == 0
    assert "cls-head" in best_row((tmp_path / "compare.md").read_text())


def test_compare_across_stages_never_picks_a_run_without_the_metric(mlflow_store, tmp_path, capsys):
    assert compare(tmp_path, "--best", "test_accuracy", "--minimize", "--metrics", "val_loss") == 0
    md = (tmp_path / "compare.md").read_text()
    assert "inst-lora" in md and "cls-head" in best_row(md)


def test_compare_tag_filter_and_run_ids(mlflow_store, tmp_path, capsys):
    assert compare(tmp_path, "--tag", "dvc_exp=cls-lora") == 0
    md = (tmp_path / "compare.md").read_text()
    assert "cls-lora" in md and "cls-head" not in md and "cls-block" not in md
    ids = mlflow_store.ids
    assert compare(tmp_path, "--runs", ids["cls-head"], ids["inst-lora"], "--metrics", "val_loss") == 0
    md = (tmp_path / "compare.md").read_text()
    assert "cls-head" in md and "inst-lora" in md and "cls-lora" not in md


def test_compare_without_matching_runs_says_how_to_get_some(mlflow_store, tmp_path, capsys):
    assert compare(tmp_path, "--stage", "pretrain", "--tag", "dvc_exp=nope") == 2
    err = capsys.readouterr().err
    assert "no runs match" in err and "stage `pretrain`" in err and "dvc_exp=nope" in err
    assert "dvc exp run" in err and "--experiment" in err and "cmp" in err
    assert not (tmp_path / "compare.md").exists()


def test_compare_unknown_best_metric_lists_the_available_ones(mlflow_store, tmp_path, capsys):
    assert compare(tmp_path, "--stage", "finetune_classifier", "--best", "accuracy") == 2
    err = capsys.readouterr().err
    assert "accuracy" in err and "test_accuracy" in err and "tokens_per_s" in err


def test_compare_bad_tag_is_a_clear_error(mlflow_store, tmp_path, capsys):
    assert compare(tmp_path, "--tag", "dvc_exp") == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_compare_default_experiment_comes_from_params_yaml(mlflow_store, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(merged({"tracking": {"experiment": "cmp"}})))
    assert main(["compare", "--stage", "finetune_instruct"]) == 0
    assert (tmp_path / "reports" / "compare" / "compare.md").is_file()
    (tmp_path / "params.yaml").write_text("tracking:\n  experimen: cmp\n")  # unreadable: fall back
    assert main(["compare"]) == 2
    assert "experiment `gptpipe`" in capsys.readouterr().err


def test_compare_last_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--last", "0"])
    assert "positive" in capsys.readouterr().err


def test_export_hf_writes_a_transformers_folder_or_explains(tmp_path, capsys):
    from model.checkpoint import save_model
    from model.gpt import GPTModel

    save_model(tmp_path / "pretrain", GPTModel(gpt_config(vocab_size=50, context_length=16, emb_dim=16,
                                                         n_heads=2, n_layers=1)))
    assert main(["export-hf", str(tmp_path / "pretrain"), str(tmp_path / "hf")]) == 0
    assert "GPT2LMHeadModel.from_pretrained" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "hf").iterdir()} == {"config.json", "model.safetensors"}
    assert main(["export-hf", str(tmp_path / "nope"), str(tmp_path / "hf2")]) == 2
    assert "nope/config.json not found" in capsys.readouterr().err
