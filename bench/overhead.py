"""Orchestration overhead of the default pipeline: wall time of `dvc repro` (what `make pipeline`
runs) against the stages' own computation, and each stage's start-up.

    python bench/overhead.py [--quick] [--keep]

Copies the project's tracked files into a temporary git repository and runs plain `dvc repro` there
on the default params (`--quick`: a few steps per stage, for a fast check of the harness). Each
stage is an ordinary process (`python -m pipelines <stage>`). Each line DVC prints is time-stamped
as it arrives, so every stage gets a wall time: from DVC's "Running stage" line to the next one (or
DVC's exit), i.e. including DVC's own work after it (hashing its outputs, writing dvc.lock). From
reports/timings/<stage>.json it takes `compute_seconds` (the stage body less its MLflow calls),
`tracking_seconds` (those calls) and `startup_seconds` (the stage process's start to the first
line of its work). For each stage:

    wall      its share of the pipeline command's wall time
    compute   the body, less its MLflow calls: what the stage is for
    startup   interpreter, imports, finding the Prefect server, flow run, MLflow run, up to the body
    tracking  MLflow calls inside the body
    rest      wall - compute - startup - tracking: MLflow's closing records, Prefect's flow
              teardown, exit, DVC's hashing and lock file

plus a `dvc` row (DVC's start-up before the first stage). overhead = wall - sum of compute; the
overhead share is overhead / wall. The last line printed is one JSON object: overhead_share,
median_startup_s, wall_s, compute_s, overhead_s and per-stage figures.

As on a developer's machine after the first run, the local Prefect server (pipelines/prefect_server.py)
is started, and the copy's MLflow store (mlflow.db) created, before the timed run: that one-time
set-up is reported as setup_s, outside the pipeline's wall time. The server's home is --prefect-home
(default: a folder under the system's temporary directory that persists between runs, so only the
first run ever creates its database); the server is left running for the next bench run (`gptpipe
server stop` with GPTPIPE_PREFECT_HOME set to that folder stops it). The machine's load
(`os.getloadavg`) is printed before and after: on a shared machine the figures move.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the stage list comes from the project
from pipelines import STAGES  # noqa: E402 - every stage of the pipeline, in order
# --quick: each stage does a little of its work; the orchestration around it is unchanged.
QUICK = {
    "pretrain": {"max_steps": 20, "eval_interval": 10, "eval_batches": 2, "sample_tokens": 8},
    "finetune_classifier": {"epochs": 1, "eval_interval": 20},
    "finetune_instruct": {"epochs": 1, "eval_interval": 20},
    "finetune_preference": {"epochs": 1, "eval_interval": 20},
    "evaluate": {"val_batches": 5},
}


# What the first stage run in a repository does once: create the MLflow store's tables (all of
# MLflow's migrations, tens of seconds on a busy 2-core machine).
CREATE_MLFLOW_STORE = ("from mlflow.tracking import MlflowClient; from steps.tracking.runs import tracking_uri; "
                       "MlflowClient(tracking_uri()).search_experiments()")


def copy_project(work: Path, quick: bool) -> None:
    """The tracked (and untracked, not ignored) files of this checkout, committed in a new repository."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, names):
        if (ROOT / name).is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, work / name)
    if quick:
        params = yaml.safe_load((work / "params.yaml").read_text())
        for section, values in QUICK.items():
            params[section].update(values)
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ, GIT_AUTHOR_NAME="bench", GIT_COMMITTER_NAME="bench",
               GIT_AUTHOR_EMAIL="bench@gptpipe.invalid", GIT_COMMITTER_EMAIL="bench@gptpipe.invalid")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "bench copy"]):
        subprocess.run(cmd, cwd=work, env=env, check=True, capture_output=True)


def bench_env(prefect_home: Path) -> dict[str, str]:
    # A team's servers or an outer DVC experiment must not leak into the measurement.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "DVC_", "GPTPIPE_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["GPTPIPE_PREFECT_HOME"] = str(prefect_home)
    env["NO_PROXY"] = "127.0.0.1,localhost"
    env["PYTHONUNBUFFERED"] = "1"  # stage lines arrive when printed, so their timestamps are right
    return env


def set_up(work: Path, env: dict[str, str]) -> float:
    """Seconds to start (or find) the local Prefect server and create the copy's MLflow store."""
    start = time.perf_counter()
    for step in (["-m", "pipelines", "server", "start"], ["-c", CREATE_MLFLOW_STORE]):
        done = subprocess.run([sys.executable, *step], cwd=work, env=env, capture_output=True, text=True,
                              timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(step)} failed:\n{done.stdout}{done.stderr}")
    return time.perf_counter() - start


def timed_repro(work: Path, env: dict[str, str]) -> tuple[float, list[tuple[float, str]], int]:
    """(wall seconds, [(seconds since start, line)], exit status) of `dvc repro`."""
    start = time.perf_counter()
    proc = subprocess.Popen(["dvc", "repro"], cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    assert proc.stdout is not None
    lines = [(time.perf_counter() - start, line.rstrip("\n")) for line in proc.stdout]
    code = proc.wait()
    return time.perf_counter() - start, lines, code


def stage_spans(lines: list[tuple[float, str]], wall: float) -> tuple[dict[str, float], float]:
    """Each stage's wall time (its "Running stage" line to the next, or to DVC's exit), and DVC's
    time before the first stage."""
    starts = [(t, line.split("'")[1]) for t, line in lines if line.startswith("Running stage '")]
    if not starts:
        return {}, wall
    ends = [t for t, _ in starts[1:]] + [wall]
    return {stage: end - t for (t, stage), end in zip(starts, ends)}, starts[0][0]


def table(rows: dict[str, dict[str, float]], dvc_start: float) -> str:
    out = [f"{'stage':<20} {'wall s':>8} {'compute s':>10} {'startup s':>10} {'tracking s':>11} {'rest s':>8}"]
    out.append(f"{'dvc (start-up)':<20} {dvc_start:>8.2f} {0:>10.2f} {'':>10} {'':>11} {dvc_start:>8.2f}")
    for stage, r in rows.items():
        out.append(f"{stage:<20} {r['wall_s']:>8.2f} {r['compute_s']:>10.2f} {r['startup_s']:>10.2f} "
                   f"{r['tracking_s']:>11.2f} {r['rest_s']:>8.2f}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few steps per stage (a check, not the headline)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy (its path is printed)")
    parser.add_argument("--prefect-home", type=Path,
                        default=Path(tempfile.gettempdir()) / "gptpipe-bench" / "prefect-home")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="gptpipe-overhead-"))
    work = tmp / "repo"
    work.mkdir()
    args.prefect_home.mkdir(parents=True, exist_ok=True)
    env = bench_env(args.prefect_home)
    print(f"copy: {work}  quick: {args.quick}  load: {os.getloadavg()}", flush=True)
    try:
        copy_project(work, args.quick)
        setup = set_up(work, env)
        print(f"set-up (Prefect server, mlflow.db; outside the timed run): {setup:.1f} s", flush=True)
        wall, lines, code = timed_repro(work, env)
        if code != 0:
            print("\n".join(line for _, line in lines[-60:]), file=sys.stderr)
            print(f"dvc repro failed ({code})", file=sys.stderr)
            return 1
        spans, dvc_start = stage_spans(lines, wall)
        rows = {}
        for stage in STAGES:
            report = json.loads((work / "reports" / "timings" / f"{stage}.json").read_text())
            compute, startup = report["compute_seconds"], report["startup_seconds"]
            tracking = report.get("tracking_seconds", 0.0)
            span = spans.get(stage, 0.0)
            rows[stage] = {"wall_s": round(span, 3), "compute_s": compute, "startup_s": startup,
                           "tracking_s": tracking, "rest_s": round(span - compute - startup - tracking, 3)}
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    compute_total = sum(r["compute_s"] for r in rows.values())
    overhead = wall - compute_total
    median_startup = statistics.median(r["startup_s"] for r in rows.values())
    print(table(rows, dvc_start))
    print(f"wall {wall:.1f} s, compute {compute_total:.1f} s, overhead {overhead:.1f} s ({overhead / wall:.1%}); "
          f"median stage start-up {median_startup:.2f} s; load after: {os.getloadavg()}")
    print(json.dumps({"overhead_share": round(overhead / wall, 4), "median_startup_s": round(median_startup, 3),
                      "wall_s": round(wall, 3), "compute_s": round(compute_total, 3),
                      "overhead_s": round(overhead, 3), "setup_s": round(setup, 3), "quick": args.quick,
                      "dvc_startup_s": round(dvc_start, 3), "stages": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
