"""The `gptpipe` command line: a table from stage names to flows."""

import importlib

import pytest

from pipelines import STAGES
from pipelines.__main__ import main, stage_request
from pipelines.cli import RANK_ENTRIES, run_flow, torchrun_relaunch


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
    (tmp_path / "p.yaml").write_text("pretrain:\n  nproc: 2\n")
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
    (tmp_path / "params.yaml").write_text("tracking:\n  experiment: cmp\n")
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
    from model.config import GPTConfig
    from model.gpt import GPTModel

    save_model(tmp_path / "pretrain", GPTModel(GPTConfig(vocab_size=50, context_length=16, emb_dim=16,
                                                         n_heads=2, n_layers=1)))
    assert main(["export-hf", str(tmp_path / "pretrain"), str(tmp_path / "hf")]) == 0
    assert "GPT2LMHeadModel.from_pretrained" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "hf").iterdir()} == {"config.json", "model.safetensors"}
    assert main(["export-hf", str(tmp_path / "nope"), str(tmp_path / "hf2")]) == 2
    assert "nope/config.json not found" in capsys.readouterr().err


def test_a_torchrun_rank_never_hands_over_to_the_warm_runner(monkeypatch):
    """Each rank torchrun starts must stay its own process (torchrun watches it, the process group
    binds it to a device): with WORLD_SIZE set the stage runs here even with the runner on."""
    from pipelines import warm_client

    def refuse(*_args, **_kwargs):
        raise AssertionError("a torchrun rank was handed to the warm runner")

    monkeypatch.setattr(warm_client, "run_command", refuse)
    monkeypatch.setattr(warm_client, "enabled", lambda env=None: True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert warm_client.hand_over(["pretrain", "--params", "params.yaml"]) is None
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setattr(warm_client, "run_command", lambda argv, started, start: 0)
    assert warm_client.hand_over(["pretrain", "--params", "params.yaml"]) == 0


def test_a_plain_stage_command_is_recognised_without_argparse():
    assert stage_request(["download"]) == ("download", "params.yaml")
    assert stage_request(["pretrain", "--params", "p.yaml"]) == ("pretrain", "p.yaml")
    assert stage_request(["evaluate", "--params=other.yaml"]) == ("evaluate", "other.yaml")
    # anything else is argparse's: help, unknown stages and options, a missing value
    for argv in ([], ["--help"], ["download", "--help"], ["nope"], ["download", "--params"],
                 ["download", "--params="], ["download", "--params", "--help"], ["download", "extra"],
                 ["compare", "--params", "p.yaml"]):
        assert stage_request(argv) is None, argv


def test_a_stage_the_runner_cannot_take_runs_here_and_the_runner_is_asked_once(monkeypatch):
    """main() asks the runner once; when it is unavailable the command line runs the stage itself."""
    from pipelines import cli, warm_client

    asked, ran = [], []
    monkeypatch.setattr(warm_client, "enabled", lambda env=None: True)
    monkeypatch.setattr(warm_client, "run_command", lambda argv, started, start: asked.append(argv) or _unavailable())
    monkeypatch.setattr(cli, "run_flow", lambda stage, params, experiment: ran.append((stage, params, experiment)))
    monkeypatch.setattr("steps.config.load_params", lambda path: _params_with_one_process())
    assert main(["tokenize", "--params", "params.yaml"]) == 0
    assert asked == [["tokenize", "--params", "params.yaml"]]
    assert ran == [("tokenize", "params.yaml", "gptpipe")]


def test_repro_goes_to_a_running_runner_whole_and_otherwise_runs_dvc_here(monkeypatch, capsys):
    """`gptpipe repro ARGS` is `dvc repro ARGS`: handed as typed (DVC parses the rest, not
    argparse) to a runner that is up; none is started for it (a repro with nothing to do must not
    wait for one; its first stage starts one): then DVC runs in this process, without a word."""
    from pipelines import cli, warm_client

    connects, asked, ran = [], [], []
    monkeypatch.setattr(warm_client, "enabled", lambda env=None: True)
    monkeypatch.setattr(warm_client, "connect", lambda start=True: connects.append(start))  # none runs
    monkeypatch.setattr(cli, "repro_command", lambda dvc_args: ran.append(dvc_args) or 0)
    assert main(["repro", "--dry", "-s", "tokenize"]) == 0
    assert connects == [False] and ran == [["--dry", "-s", "tokenize"]]
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(warm_client, "run_command", lambda argv, started, start: asked.append((argv, start)) or 7)
    assert main(["repro", "-f"]) == 7  # the runner's answer is the command's exit status
    assert asked == [(["repro", "-f"], False)] and len(ran) == 1
    assert main(["repro"], warm=False) == 0  # in the runner's child
    assert ran[-1] == [] and len(asked) == 1


def test_repro_runs_dvc_with_logging_as_a_fresh_dvc_process(monkeypatch):
    """In the runner's child, Prefect's handlers sit on the root logger and DVC's were set up for
    the runner's log: repro_command starts from what a fresh `dvc` process has, every time."""
    import logging

    import dvc.cli
    import dvc.logger

    from pipelines import cli

    loggers = [logging.getLogger(name) for name in ("dvc", "dvc_objects", "dvc_data")]
    for logger in [logging.getLogger(), *loggers]:
        monkeypatch.setattr(logger, "handlers", list(logger.handlers))  # restored after the test
    logging.getLogger().addHandler(logging.StreamHandler())  # as Prefect's, in the runner
    calls = []
    monkeypatch.setattr(dvc.cli, "main", lambda argv: calls.append(argv) or 0)
    for _ in range(2):
        assert cli.repro_command(["--dry"]) == 0
        assert logging.getLogger().handlers == []
        for logger in loggers:  # dvc.logger.setup()'s four (info, debug, trace, errors), not twice that
            assert sum(isinstance(h, dvc.logger.LoggerHandler) for h in logger.handlers) == 4
    assert calls == [["repro", "--dry"], ["repro", "--dry"]]
    # `repro` is listed in the help, and its options are DVC's, not argparse's
    monkeypatch.setattr(cli, "repro_command", lambda dvc_args: calls.append(dvc_args) or 0)
    assert cli.cli(["repro", "--dry", "-f"], warm=False) == 0 and calls[-1] == ["--dry", "-f"]


def _unavailable():
    from pipelines.warm_client import WarmError

    raise WarmError("no runner in this test")


def _params_with_one_process():
    from types import SimpleNamespace

    return SimpleNamespace(pretrain=SimpleNamespace(nproc=1), tracking=SimpleNamespace(experiment="gptpipe"))
