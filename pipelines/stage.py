"""What every stage flow shares: load params once, seed, open the MLflow run, write metrics."""

from __future__ import annotations

import logging
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.settings import get_current_settings

from model.atomic import write_json
from pipelines import show_info_logs
from steps import layout
from steps.config import Params, flat_params, load_params, params_hash
from steps.tracking.runs import StageRun, stage_run

log = logging.getLogger("gptpipe.stage")
show_info_logs()

# Stage tasks pass models and tensors in memory within one flow run; hashing those inputs for
# Prefect's cache would cost time and buy nothing, since DVC already decides what reruns. Nor are
# results persisted: DVC keeps the outputs, Prefect the run records (which also spares each run
# a look-up of the server's default result storage).
stage_task = task(cache_policy=NO_CACHE, persist_result=False)
io_task = task(cache_policy=NO_CACHE, persist_result=False, retries=2, retry_delay_seconds=1)


def stage_flow(name: str) -> Callable[[Callable[..., Any]], Any]:
    """The decorator of a stage's flow: one flow run per stage, results not persisted (above).
    Its result storage is named anyway, as Prefect's own local default: without one, every flow
    run asks the server for a default storage block (a round trip, ~15 ms) it would never use."""
    return flow(name=name, persist_result=False, result_storage=get_current_settings().results.local_storage_path)


class NoTracking:
    """Stands in for the MLflow run on torchrun ranks other than 0: rank 0 alone records the stage."""

    seconds = 0.0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_model_folder(self, folder: str | Path) -> None:
        pass

    def log_text(self, text: str, name: str) -> None:
        pass

    def log_child_run(self, name: str, params: Mapping[str, Any], metrics: Mapping[str, float],
                      tags: Mapping[str, str], seconds: float | None = None) -> str:
        return ""


@dataclass
class StageContext:
    stage: str
    params: Params
    run: StageRun | NoTracking

    @property
    def plots(self) -> Path:
        folder = layout.plots_dir(self.stage)
        folder.mkdir(parents=True, exist_ok=True)
        return folder


def seed_everything(seed: int) -> None:
    """Seed Python's generator, and NumPy's and torch's when the stage has imported them: the
    stages that use them import them at module level (before this runs), and a stage that does not
    (download, tokenize) should not pay for importing torch just to seed it."""
    random.seed(seed)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed(seed)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)


def process_start_time() -> float:
    """When this process started (Unix time), to the kernel's clock tick (10 ms): what a stage's
    startup_seconds counts from. Linux: /proc/self/stat's start time in ticks after boot, and the
    boot time from /proc/uptime (psutil's create_time() takes the boot time from /proc/stat's btime,
    in whole seconds, so it reads up to a second early). Elsewhere psutil's create_time()."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            stat = f.read()
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime (after the command's name)
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        import psutil

        return psutil.Process().create_time()


def is_timing(metric: str) -> bool:
    """Whether a metric measures this machine at this moment rather than the inputs: durations
    (`*_seconds`, `seconds_per_*`), rates (`*_per_s`), memory peaks and MFU. MLflow records them
    with the rest; `reports/timings/<stage>.json` holds them outside DVC."""
    words = metric.split("_")
    return "seconds" in words or "memory" in words or metric.endswith("_per_s") or metric == "mfu"


def write_metrics(stage: str, metrics: dict[str, float]) -> None:
    """`reports/<stage>.json`, a DVC metric: the same inputs must write the same bytes, so this
    machine's and moment's figures go beside it, into `reports/timings/<stage>.json` (no DVC out)."""
    write_json(layout.metrics_file(stage), {k: v for k, v in metrics.items() if not is_timing(k)})
    write_json(layout.timings_file(stage), {k: v for k, v in metrics.items() if is_timing(k)})


class OutputsNotWritable(OSError):
    """A stage could not write one of its outputs: found before it trains, not when it saves. An
    expected error (steps/errors.py lists it: stage code does not import that module, which is no
    stage's dependency)."""


def stage_outputs(stage: str, dvc_file: Path = Path("dvc.yaml")) -> list[Path]:
    """What the stage writes: its outs, metrics and plots in dvc.yaml (run from the repository root),
    and in any case its metrics file and plots folder (run_stage writes those)."""
    paths = [layout.metrics_file(stage), layout.plots_dir(stage)]
    if dvc_file.is_file():
        import yaml

        entry = (yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}).get("stages", {}).get(stage, {})
        for kind in ("outs", "metrics", "plots"):
            for item in entry.get(kind) or []:
                paths.extend(Path(p) for p in (item if isinstance(item, dict) else {item: None}))
    return paths


def check_outputs_writable(stage: str, dvc_file: Path = Path("dvc.yaml")) -> None:
    """Raise OutputsNotWritable, naming the folder and the fix, unless a file can be created where
    each output goes (its nearest existing folder): tried for real, since permission bits do not tell
    (root ignores them; a read-only mount does not show in them)."""
    checked: set[Path] = set()
    for path in stage_outputs(stage, dvc_file):
        folder = path if path.is_dir() else path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if folder in checked:
            continue
        checked.add(folder)
        try:
            if not folder.is_dir():
                raise NotADirectoryError(f"{folder} is a file, not a folder")
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as err:
            raise OutputsNotWritable(
                f"{path}: the {stage} stage cannot write its output there ({err.strerror or err}: {folder}). "
                f"Make {folder} a writable folder (e.g. `chmod u+w {folder}`, or move the file of that name "
                f"away), then rerun; checked before the stage starts its work") from err


def run_stage(
    stage: str,
    params_path: str,
    sections: Sequence[str],
    inputs: Iterable[str | Path],
    body: Callable[[StageContext], dict[str, float]],
) -> dict[str, float]:
    """Run `body` inside the stage's MLflow run; write `reports/<stage>.json` (timings apart, in
    `reports/timings/<stage>.json`) and log the plots. A folder it cannot write to stops it first,
    before any work."""
    params = load_params(params_path)
    check_outputs_writable(stage)
    seed_everything(params.seed)
    with stage_run(
        stage,
        params=flat_params(params, list(sections)),
        params_hash=params_hash(params, list(sections)),
        inputs=[p for p in inputs if Path(p).exists()],
        experiment=params.tracking.experiment,
        log_models=params.tracking.log_models,
    ) as run:
        ctx = StageContext(stage, params, run)
        # Process start -> here: interpreter, imports, Prefect's server, MLflow's store.
        startup = time.time() - process_start_time()
        start, tracked = time.perf_counter(), run.seconds
        metrics = body(ctx)
        # The stage's own computation, to compare with its process wall time (orchestration cost):
        # the body's time less what its MLflow calls took (per-step metrics, model artifacts).
        tracking = run.seconds - tracked
        metrics["compute_seconds"] = round(time.perf_counter() - start - tracking, 3)
        metrics["tracking_seconds"] = round(tracking, 3)
        metrics["startup_seconds"] = round(startup, 3)
        run.log_metrics(metrics)
        write_metrics(stage, metrics)
        run.log_artifact(layout.metrics_file(stage))
        if layout.plots_dir(stage).is_dir():
            run.log_artifacts(layout.plots_dir(stage), artifact_path="plots")
    log.info("%s metrics: %s", stage, metrics)
    return metrics


def run_stage_rank(stage: str, params_path: str, body: Callable[[StageContext], dict[str, float]]) -> None:
    """A torchrun rank other than 0: the stage's body with the same params and seed as rank 0, but
    no Prefect flow, no MLflow run and no reports (the body writes only on rank 0)."""
    params = load_params(params_path)
    seed_everything(params.seed)
    logging.getLogger("gptpipe").setLevel(logging.WARNING)  # rank 0 tells the story once
    body(StageContext(stage, params, NoTracking()))
