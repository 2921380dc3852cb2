"""The `gptpipe` command line: a table from stage names to flows."""

import importlib

import pytest

from pipelines.__main__ import STAGES, main


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


def test_unknown_stage_is_rejected():
    with pytest.raises(SystemExit):
        main(["pretrian"])
