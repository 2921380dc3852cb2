"""The layout's rules, checked on every import statement of the product code (top-level or inside
a function): `model/` is the networks and imports only torch and its kin; MLflow is called only
from `steps/tracking/`; Prefect only from `pipelines/`; `steps/` never reaches into `pipelines/`."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "steps", "pipelines")
# What model/ may import besides the standard library and itself: torch and the libraries that
# hold tensors or adapters for it (safetensors files, peft's LoRA layers).
MODEL_MAY_IMPORT = {"torch", "safetensors", "peft", "numpy"}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every import in a file; relative imports resolve to our package."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = path.resolve().relative_to(ROOT).parts[0] if node.level else (node.module or "").split(".")[0]
            found.append((node.lineno, module))
    return found


def product_files(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "eval_modules" not in p.parts)


def offenders(files: list[Path], banned: set[str]) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{line} imports {module}"
            for path in files for line, module in imports_of(path) if module in banned]


def test_imports_of_sees_top_level_function_level_and_relative_imports(tmp_path: Path) -> None:
    assert "torch" in {m for _, m in imports_of(ROOT / "model" / "gpt.py")}
    probe = tmp_path / "probe.py"
    probe.write_text("import os.path\ndef f():\n    from mlflow.tracking import MlflowClient\n")
    assert sorted(m for _, m in imports_of(probe)) == ["mlflow", "os"]


def test_model_imports_only_torch_and_its_kin() -> None:
    allowed = MODEL_MAY_IMPORT | set(sys.stdlib_module_names) | {"model", "__future__"}
    bad = [f"{path.relative_to(ROOT)}:{line} imports {module}"
           for path in product_files("model") for line, module in imports_of(path) if module not in allowed]
    assert not bad, "model/ holds the networks and imports only torch & kin:\n" + "\n".join(bad)


def test_mlflow_is_called_only_from_the_tracking_package() -> None:
    files = [p for pkg in PACKAGES for p in product_files(pkg)
             if not p.is_relative_to(ROOT / "steps" / "tracking")]
    bad = offenders(files, {"mlflow"})
    assert not bad, "MLflow belongs in steps/tracking/:\n" + "\n".join(bad)


def test_prefect_is_used_only_from_pipelines() -> None:
    bad = offenders(product_files("model") + product_files("steps"), {"prefect"})
    assert not bad, "Prefect belongs in pipelines/ (steps are plain functions):\n" + "\n".join(bad)


def test_steps_and_model_never_import_the_wiring() -> None:
    bad = offenders(product_files("steps"), {"pipelines"}) + offenders(product_files("model"), {"steps", "pipelines"})
    assert not bad, "steps/ and model/ must not depend on pipelines/ (nor model/ on steps/):\n" + "\n".join(bad)
