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
    # A metrics file is an output too (evaluate reads the classifier's TF-IDF baseline from one).
    produced = {out for s in stages.values() for kind in ("outs", "metrics") for out in _names(s.get(kind, []))}
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


# Code a stage runs that is no dep of it, so that editing it reruns nothing: orchestration
# (the Prefect server) and tracking (MLflow) cannot change what a stage writes; params are deps
# through their params.yaml entries (steps/config.py only reads and checks them); the paths of
# steps/layout.py are dvc.yaml's own (test_outputs_are_the_paths_the_code_writes); package
# __init__ files hold docstrings.
NOT_DEPS = {"pipelines/prefect_server.py", "steps/config.py", "steps/layout.py"}
NOT_DEP_FOLDERS = ("steps/tracking/",)


def project_imports(path: Path, root: Path) -> set[Path]:
    """Files of this project that `path` imports (at the top or inside functions)."""
    import ast

    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] not in ("model", "steps", "pipelines"):
                continue
            base = root.joinpath(*name.split("."))
            for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                if candidate.is_file():
                    found.add(candidate)
    return found


def is_dep_exempt(file: str) -> bool:
    return file in NOT_DEPS or file.startswith(NOT_DEP_FOLDERS) or file.endswith("__init__.py")


def code_closure(start: Path, root: Path) -> set[str]:
    """Every project file a stage's flow module reaches through imports, as repo-relative paths;
    what only exempt modules import (e.g. the config's own imports) is not followed."""
    seen: set[Path] = set()
    todo = [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        if path == start or not is_dep_exempt(str(path.relative_to(root))):
            todo.extend(project_imports(path, root) - seen)
    return {str(p.relative_to(root)) for p in seen}


def test_each_stage_depends_on_all_the_code_it_imports(repo_root):
    """A stage reruns when any code it runs changes: its deps cover every module its flow imports
    (orchestration and tracking code aside, which cannot change what it writes)."""
    for name, stage in _dvc(repo_root)["stages"].items():
        deps = [d for d in stage["deps"] if (repo_root / d).exists()]
        closure = code_closure(repo_root / "pipelines" / f"{name}.py", repo_root)
        missing = sorted(
            f for f in closure
            if not is_dep_exempt(f) and not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)
        )
        assert not missing, f"dvc.yaml: stage {name} runs {missing} but does not list them (or a folder) as deps"


def test_code_closure_follows_function_level_imports(repo_root, tmp_path):
    (tmp_path / "steps").mkdir()
    (tmp_path / "steps" / "__init__.py").write_text("")
    (tmp_path / "steps" / "a.py").write_text("def f():\n    from steps import b\n")
    (tmp_path / "steps" / "b.py").write_text("import steps.c\n")
    (tmp_path / "steps" / "config.py").write_text("import steps.d\n")  # exempt: not followed
    (tmp_path / "steps" / "d.py").write_text("")
    (tmp_path / "steps" / "c.py").write_text("from steps import config\n")
    assert code_closure(tmp_path / "steps" / "a.py", tmp_path) == {
        "steps/a.py", "steps/b.py", "steps/c.py", "steps/config.py", "steps/__init__.py"}
