"""dvc.yaml agrees with the code: stage names, commands, paths, params and code deps."""

from pathlib import Path

import yaml

from pipelines import STAGES
from steps import layout
from steps.config import Params


def _dvc(repo_root: Path) -> dict:
    return yaml.safe_load((repo_root / "dvc.yaml").read_text())


def _names(entries: list) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries]


def test_stages_match_the_cli_and_run_their_flow(repo_root):
    stages = _dvc(repo_root)["stages"]
    assert list(stages) == list(STAGES)
    for name, stage in stages.items():
        assert stage["cmd"] == f"python -m pipelines {name}"
        assert f"pipelines/{name}.py" in stage["deps"]
        assert _names(stage["metrics"]) == [str(layout.metrics_file(name))]
        assert stage["plots"], name


def test_every_dep_exists_and_every_param_is_known(repo_root):
    stages = _dvc(repo_root)["stages"]
    produced = {out for s in stages.values() for out in _names(s.get("outs", []))}
    for name, stage in stages.items():
        for dep in stage["deps"]:
            upstream = any(dep == out or dep.startswith(out + "/") for out in produced)
            assert upstream or (repo_root / dep).exists(), f"{name}: dep {dep} does not exist"
        for param in stage["params"]:
            section, _, key = param.partition(".")
            assert section in Params.model_fields, f"{name}: unknown params section {section}"
            if key:
                assert key in Params.model_fields[section].annotation.model_fields, f"{name}: {param}"


def test_outputs_are_the_paths_the_code_writes(repo_root):
    stages = _dvc(repo_root)["stages"]
    outs = {name: _names(stage.get("outs", [])) for name, stage in stages.items()}
    assert outs["download"] == [str(layout.RAW)]
    assert outs["tokenize"] == [str(layout.TOKENS)]
    assert outs["pretrain"] == [str(layout.PRETRAIN_MODEL)]
    assert outs["finetune_classifier"] == [str(layout.CLASSIFIER_MODEL)]
    assert outs["finetune_instruct"] == [str(layout.INSTRUCT_MODEL)]
    assert outs["evaluate"] == [str(layout.SUMMARY), str(layout.JUDGED_RESPONSES)]
    for name, stage in stages.items():
        for plot in _names(stage["plots"]):
            assert plot.startswith(str(layout.plots_dir(name)) + "/"), plot


def test_the_pretrained_model_is_not_retrained_by_finetuning_code(repo_root):
    deps = _dvc(repo_root)["stages"]["pretrain"]["deps"]
    assert not any("finetune" in d or "classification" in d or "instruction" in d for d in deps)
    assert "finetune_classifier" not in _dvc(repo_root)["stages"]["pretrain"]["params"]
