"""`gptpipe scaling plan` on the command line."""

import json

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
