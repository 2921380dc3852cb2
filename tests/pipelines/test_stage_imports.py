"""What each stage's process has imported when its work starts: the stage's own entry (argparse,
the Prefect server, the flow module, the Prefect flow run, the MLflow run, seeding), up to the
first line of its body. A stage pays for what it uses, when it uses it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pipelines import STAGES

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "peft", "transformers", "datasets", "evaluate", "matplotlib", "sklearn")
# What may be imported when each stage's body starts, of HEAVY (the rest must not be). The stages
# that use torch import it before they are seeded (pipelines/stage.py seeds what is imported).
EXPECTED = {
    "download": set(),
    "tokenize": set(),
    "pretrain": {"torch"},
    "finetune_classifier": {"torch"},
    "label_efficiency": {"torch"},
    "finetune_instruct": {"torch"},
    "finetune_preference": {"torch"},
    "evaluate": {"torch"},
}

# The stage's real entry (`python -m pipelines <stage>`: cli.cli), with the body the flow hands to
# run_stage swapped for one that reports sys.modules: everything up to the body runs for real.
PROBE = """
import importlib, json, sys
from pipelines import STAGES, cli

stage = sys.argv[1]
module = importlib.import_module(STAGES[stage][0])
real = module.run_stage

def report_imports(ctx):
    print("IMPORTED " + json.dumps(sorted(name for name in sys.modules if "." not in name)))
    return {}

module.run_stage = lambda stage, params_path, sections, inputs, body: real(stage, params_path, sections, inputs,
                                                                          report_imports)
sys.exit(cli.cli([stage]))
"""


def imported_at_work(stage: str, cwd: Path, env: dict[str, str]) -> set[str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, stage], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("IMPORTED ")]
    return set(json.loads(line.removeprefix("IMPORTED ")))


def test_each_stage_imports_only_what_it_uses_before_its_work_starts(prefect_api, tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = str(ROOT)
    # The stage module is imported in the probe before the flow runs: the same modules as in
    # `python -m pipelines <stage>`, where cli imports it to find the flow.
    seen = {stage: imported_at_work(stage, tmp_path, env) & set(HEAVY) for stage in STAGES}
    assert seen == EXPECTED


def test_the_probe_sees_torch_imported_on_downloads_path(tmp_path, prefect_api):
    """The control: with torch imported before download's wiring runs, the probe reports it."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = str(ROOT)
    probe = PROBE.replace("import importlib, json, sys", "import importlib, json, sys, torch")
    proc = subprocess.run([sys.executable, "-c", probe, "download"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert '"torch"' in next(line for line in proc.stdout.splitlines() if line.startswith("IMPORTED "))
