"""The `gptpipe` command line: `gptpipe <stage>` runs one stage's flow (what `dvc repro` runs),
`gptpipe server` shows or stops the local Prefect server, `gptpipe compare` compares runs,
`gptpipe retrain` / `gptpipe schedule` retrain with a promotion gate, once or on a cron schedule.

Each command imports what it uses when it runs: a stage process pays only for its own stage."""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines import STAGES, inference, serve
from pipelines.scaling import add_scaling_parser, scaling_command

if TYPE_CHECKING:
    from steps.evaluation.compare import Filters

# Stages that can run as several torchrun processes -> (module, what ranks other than 0 run).
RANK_ENTRIES: dict[str, tuple[str, str]] = {
    "pretrain": ("pipelines.pretrain", "pretrain_rank"),
}


def run_flow(stage: str, params_path: str) -> dict[str, float]:
    """The stage's flow; under torchrun, ranks other than 0 run the stage's rank entry instead."""
    if stage in RANK_ENTRIES:
        from steps.training.distributed import is_main_process

        if not is_main_process():
            module, name = RANK_ENTRIES[stage]
            getattr(importlib.import_module(module), name)(params_path=params_path)
            return {}
    module, name = STAGES[stage]
    flow = getattr(importlib.import_module(module), name)
    return flow(params_path=params_path)


def torchrun_relaunch(stage: str, params_path: str, nproc: int) -> list[str] | None:
    """The torchrun command that runs `stage` as `nproc` processes, or None to run it here: with one
    process, or when this process is one of torchrun's already (a launch of your own, e.g. on
    several machines, is not launched again)."""
    if stage not in RANK_ENTRIES or nproc <= 1:
        return None
    from steps.training.distributed import torchrun_command, under_torchrun  # torch: not for other stages

    if under_torchrun():
        return None
    return torchrun_command(nproc, ["pipelines", stage, "--params", params_path])


def cli(argv: list[str] | None = None) -> int:
    """Every command, parsed by argparse."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="gptpipe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true",
                        help="show failures' tracebacks on the terminal (as GPTPIPE_DEBUG=1 does); "
                             "without it an expected error is one message, its traceback in logs/<stage>.log")
    sub = parser.add_subparsers(dest="command", required=True)
    for stage in STAGES:
        p = sub.add_parser(stage, help=f"run the {stage} stage (normally through `dvc repro`)")
        p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sub.add_parser("stages", help="list the stages")
    server = sub.add_parser("server", help="the local Prefect server the stages record to: start, status "
                                           "(its UI address), stop",
                            description="The local Prefect server (one per user; see pipelines/prefect_server.py). "
                                        "Stages start it on first need unless PREFECT_API_URL is set.")
    server.add_argument("action", choices=["start", "status", "stop"])
    add_services_parser(sub)
    prof = sub.add_parser("profile", help="switch params.yaml to a shipped profile (builtin, book, book-small)")
    prof.add_argument("name", nargs="?", help="profile name; omit to list them")
    prof.add_argument("--params", default="params.yaml", help="params file to edit (default: params.yaml)")
    exp = sub.add_parser("export-hf", help="write a model folder in Hugging Face's GPT-2 format, or Llama's for "
                                           "model.arch llama (GPT2LMHeadModel / LlamaForCausalLM.from_pretrained "
                                           "loads it)")
    exp.add_argument("model", type=Path, help="a gptpipe model folder, e.g. models/pretrain")
    exp.add_argument("out", type=Path, help="folder to write config.json + model.safetensors into")
    add_compare_parser(sub)
    add_retrain_parsers(sub)
    inference.add_parsers(sub)
    serve.add_parser(sub)
    add_scaling_parser(sub)
    args = parser.parse_args(argv)
    if args.debug:
        os.environ["GPTPIPE_DEBUG"] = "1"  # inherited by torchrun's ranks and the stages `dvc repro` runs

    if args.command == "stages":
        print("\n".join(STAGES))
        return 0
    if args.command == "services":
        return services_command(args)
    if args.command == "compare":
        return compare_runs(args)
    if args.command == "export-hf":
        return _export_hf(args.model, args.out)
    if args.command == "server":
        return server_command(args.action)
    if args.command in ("retrain", "schedule"):
        return retrain_command(args)
    if args.command == "profile":
        return _profile(args.name, args.params)
    if args.command in inference.COMMANDS:
        return inference.run(args)
    if args.command == "serve":
        return serve.serve_command(args)
    if args.command == "scaling":
        return scaling_command(args)
    return stage_command(args.command, args.params)


def stage_command(stage: str, params_path: str) -> int:
    """Run one stage here (under torchrun when its params ask for several processes). Exit status
    2 when the params file is invalid or the stage stops on an expected error (bad data, an
    unreachable source: said once, with its fix), 1 on any other failure (pipelines/failures.py)."""
    from steps.config import ConfigError, load_params

    try:
        # Validate before the flow starts: a typo should not cost a Prefect server start-up.
        params = load_params(params_path)
        if not use_prefect_server():
            return 1
        relaunch = torchrun_relaunch(stage, params_path, params.pretrain.nproc)
        if relaunch is not None:
            return subprocess.call(relaunch)  # its ranks inherit PREFECT_API_URL
    except ConfigError as err:
        print(f"gptpipe: {err}", file=sys.stderr)
        return 2
    from pipelines.failures import StageLog

    stage_log = StageLog(stage)
    try:
        run_flow(stage, params_path)
    except Exception as err:  # noqa: BLE001 - reported once, by kind (failures.py); the status says it
        return stage_log.failed(err)
    finally:
        stage_log.close()
    return 0


def use_prefect_server() -> bool:
    """Point this process at its Prefect server (pipelines/prefect_server.py) before Prefect is
    imported; False, said on stderr, when the local server cannot start."""
    from pipelines import prefect_server

    try:
        prefect_server.use_for_this_process()
    except prefect_server.ServerError as err:
        print(f"gptpipe: {err}", file=sys.stderr)
        return False
    return True


def server_command(action: str) -> int:
    """`gptpipe server start|status|stop`. Exit status: 0 done / running, 1 could not start,
    3 (status) not running."""
    from pipelines import prefect_server

    home = prefect_server.server_home()
    team = os.environ.get(prefect_server.API_URL_ENV)
    if team:
        print(f"note: PREFECT_API_URL is set ({team}): stages record to that server, not to this one")
    try:
        if action == "start":
            server, started = prefect_server.start(home)
            verb = "started" if started else "running"
        elif action == "stop":
            stopped = prefect_server.stop(home)
            print(f"stopped the Prefect server (pid {stopped.pid}, {stopped.ui_url})" if stopped
                  else f"no Prefect server running for {home}")
            return 0
        else:
            server, verb = prefect_server.running(home), "running"
            if server is None:
                print(f"no Prefect server running for {home}: stages start one on first need "
                      "(or `gptpipe server start`)")
                return 3
    except prefect_server.ServerError as err:
        print(f"gptpipe server: {err}", file=sys.stderr)
        return 1
    print(f"Prefect server {verb}: UI {server.ui_url}  (API {server.api_url}, pid {server.pid}, "
          f"home {server.home}, log {server.log}); `gptpipe server stop` stops it")
    return 0


def _profile(name: str | None, params_path: str) -> int:
    from steps.config import ConfigError
    from steps.profiles import apply_profile, available

    if name is None:
        print("\n".join(available()))
        return 0
    try:
        changed = apply_profile(name, params_path)
    except ConfigError as err:
        print(f"gptpipe: {err}", file=sys.stderr)
        return 2
    for key, (old, new) in changed.items():
        print(f"  {key}: {old!r} -> {new!r}")
    print(f"{params_path}: profile {name!r} applied ({len(changed)} parameters changed); "
          "run `dvc repro` (or `dvc exp run -n <name>`) to rebuild what it affects")
    return 0


def _export_hf(model: Path, out: Path) -> int:
    from model.hf_gpt2 import export_model_folder

    try:
        export_model_folder(model, out)
    except (OSError, ValueError) as err:
        print(f"gptpipe export-hf: {err}", file=sys.stderr)
        return 2
    print(f"{out}: GPT-2 in Hugging Face's format (transformers.GPT2LMHeadModel.from_pretrained({str(out)!r}))")
    return 0


def add_retrain_parsers(sub) -> None:  # what ArgumentParser.add_subparsers() returned
    help_repo = "project root to retrain (default: the current folder)"
    p = sub.add_parser("retrain", help="run the retraining flow once now: refresh sources, dvc repro, register, "
                                       "promote a better model to champion",
                       description="Refresh the data sources, rerun what changed through `dvc repro`, register "
                                   "the finetuned models in the MLflow Model Registry and move the `champion` "
                                   "alias to a version only when it beats the champion on held-out data.")
    p.add_argument("--repo", default=".", help=help_repo)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p = sub.add_parser("schedule", help="serve the retraining flow as a Prefect deployment on a cron schedule",
                       description="Create the Prefect deployment retrain/NAME with a cron schedule and run its "
                                   "runs until stopped (Ctrl-C), on the Prefect server PREFECT_API_URL names, "
                                   "else on the local one (`gptpipe server status`).")
    p.add_argument("--cron", required=True, help='when to run, e.g. "0 3 * * 1" (Mondays 03:00)')
    p.add_argument("--name", default="scheduled", help="deployment name (default: scheduled)")
    p.add_argument("--timezone", help="IANA time zone of the cron times, e.g. Europe/Paris (default: UTC)")
    p.add_argument("--repo", default=".", help=help_repo)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")


def retrain_command(args: argparse.Namespace) -> int:
    if args.command == "retrain":  # at once, not after DVC has waited for its lock and failed
        from pipelines.retraining.repo_lock import Busy, refuse_beside_running_pipeline

        try:
            refuse_beside_running_pipeline(Path(args.repo))
        except Busy as err:
            print(f"gptpipe retrain: {err}", file=sys.stderr)
            return 2
    # The retraining flow, its schedule and the stages it reruns record to one Prefect server.
    if not use_prefect_server():
        return 1
    from pipelines import retrain
    from steps.config import ConfigError

    try:
        if args.command == "schedule":
            retrain.serve(args.cron, args.name, args.timezone, args.repo, args.params)
            return 0
        report = retrain.retrain_flow(repo=args.repo, params_path=args.params)
    except (ConfigError, retrain.ScheduleError) as err:
        print(f"gptpipe {args.command}: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # the flow run failed (Prefect has logged the traceback), or the server is down
        print(f"gptpipe {args.command}: failed: {err}", file=sys.stderr)
        return 1
    for model in report["models"]:
        print(f"{model['registered_name']}: {model['reason']} (champion: version {model['champion_version_after']})")
    return 0


def add_compare_parser(sub) -> None:  # what ArgumentParser.add_subparsers() returned
    p = sub.add_parser("compare", help="compare MLflow runs: a markdown/HTML report with curves and the best run",
                       description="Compare MLflow runs: one row per run (differing params, metrics, cost), "
                                   "overlaid loss/accuracy curves, the best run marked.")
    p.add_argument("--experiment", help="MLflow experiment (default: tracking.experiment in params.yaml, "
                                        "else gptpipe)")
    p.add_argument("--stage", help="only runs of this stage, e.g. finetune_classifier")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                   help="only runs with this tag, e.g. dvc_exp=cls-lora (repeatable)")
    p.add_argument("--runs", nargs="+", default=[], metavar="ID", help="only these run ids")
    p.add_argument("--metrics", help="comma-separated metric columns (default: the stage's usual ones)")
    p.add_argument("--best", metavar="METRIC", help="mark the best run by this metric "
                                                     "(default: the stage's headline metric)")
    direction = p.add_mutually_exclusive_group()
    direction.add_argument("--minimize", dest="maximize", action="store_false", default=None,
                           help="lower --best is better (default for losses, perplexities, times, memory)")
    direction.add_argument("--maximize", dest="maximize", action="store_true", help="higher --best is better")
    p.add_argument("--last", type=positive_int, default=20, metavar="N",
                   help="the newest N matching runs (default: 20)")
    p.add_argument("--status", default="FINISHED", choices=["FINISHED", "FAILED", "KILLED", "RUNNING", "any"],
                   help="run status to include (default: FINISHED)")
    p.add_argument("--out", default="reports/compare", type=Path,
                   help="output folder (default: reports/compare)")


def add_services_parser(sub) -> None:  # what ArgumentParser.add_subparsers() returned
    p = sub.add_parser("services", help="team mode: PostgreSQL + MLflow server + Prefect server on loopback",
                       description="Start, stop or show the team servers: PostgreSQL, an MLflow tracking server "
                                   "on it and a Prefect server, all on 127.0.0.1; state, logs and PIDs in --dir.")
    actions = p.add_subparsers(dest="action", required=True)
    start = actions.add_parser("start", help="start what is not running yet, wait until healthy, print the exports")
    for action in (start, actions.add_parser("stop", help="stop Prefect, MLflow, then PostgreSQL"),
                   actions.add_parser("status", help="show each service (exit 3 if any is stopped)")):
        action.add_argument("--dir", type=Path, default=Path(".services"),
                            help="folder for the database, artifacts, logs and PIDs (default: .services)")
    # Defaults (None) mean: as at the last start in --dir, else pipelines.team.services.Settings' defaults.
    start.add_argument("--postgres-port", type=positive_int, help="PostgreSQL port (default: 5433)")
    start.add_argument("--mlflow-port", type=positive_int, help="MLflow server port (default: 5000)")
    start.add_argument("--prefect-port", type=positive_int, help="Prefect server port (default: 4200)")
    start.add_argument("--artifacts", metavar="FOLDER|URI",
                       help="where MLflow stores artifacts: a folder or s3://bucket/path, gs://... "
                            "(default: mlartifacts in --dir)")
    start.add_argument("--prefect-db", choices=["postgres", "sqlite"],
                       help="Prefect's database: the same PostgreSQL (default) or SQLite in --dir/prefect")
    start.add_argument("--mlflow-workers", type=positive_int, help="MLflow server worker processes (default: 2)")


def services_command(args: argparse.Namespace) -> int:
    from pipelines.team import services
    from pipelines.team.postgres import PostgresError

    try:
        if args.action == "start":
            running = services.start(args.dir, postgres_port=args.postgres_port, mlflow_port=args.mlflow_port,
                                     prefect_port=args.prefect_port, artifacts=_artifacts(args.artifacts),
                                     prefect_db=args.prefect_db, mlflow_workers=args.mlflow_workers)
            _print_status(services.status(args.dir))
            print(f"\nMLflow UI: {running.mlflow_url}   Prefect UI: {running.prefect_url.removesuffix('/api')}")
            print(f"Point the pipeline at them (or `source {args.dir / services.ENV_FILE}`):")
            print("".join(f"  export {k}={v}\n" for k, v in running.exports().items()), end="")
            return 0
        if args.action == "stop":
            stopped = services.stop(args.dir)
            print(f"stopped: {', '.join(stopped)}" if stopped else f"nothing was running in {args.dir}")
            return 0
        states = services.status(args.dir)
        if not states:
            print(f"no services in {args.dir}: start them with `make services` (or `gptpipe services start`)")
            return 3
        _print_status(states)
        return 0 if all(s.running for s in states) else 3
    except (services.ServiceError, PostgresError) as err:
        print(f"gptpipe services: {err}", file=sys.stderr)
        return 2


def _artifacts(where: str | None) -> str | None:
    """A folder given on the command line is relative to where the command runs; a URI stays as is."""
    return str(Path(where).resolve()) if where and "://" not in where else where


def _print_status(states: list) -> None:
    print("\n".join(s.line() for s in states))


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def compare_runs(args: argparse.Namespace) -> int:
    from steps.evaluation import compare
    from steps.tracking import runs as tracking

    try:
        filters = compare.Filters(
            experiment=args.experiment or default_experiment(), stage=args.stage,
            tags=compare.parse_tags(args.tag), run_ids=tuple(args.runs),
            status=None if args.status == "any" else args.status, last=None if args.runs else args.last,
        )
        runs = tracking.fetch_runs(filters.experiment, filters.stage, filters.tags, filters.run_ids,
                                   max_runs=filters.last, status=filters.status)
        if not runs:
            raise compare.CompareError(no_runs_message(filters, tracking.tracking_uri(),
                                                       tracking.experiment_names()))
        missing = set(filters.run_ids) - {run.run_id for run in runs}
        if missing:
            print(f"gptpipe compare: not among the matching runs: {', '.join(sorted(missing))}", file=sys.stderr)
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
        result = compare.compare(runs, filters, metrics, args.best, args.maximize)
    except ValueError as err:  # CompareError, or a filter MLflow's query language cannot express
        print(f"gptpipe compare: {err}", file=sys.stderr)
        return 2
    curve_metrics = [m for names in compare.CURVE_FIGURES.values() for m in names]
    histories = {run.run_id: tracking.metric_histories(run.run_id, curve_metrics) for run in runs}
    paths = compare.write_report(result, histories, args.out)
    print(compare.markdown_table(result))
    print("\n".join(str(p) for p in paths))
    return 0


def default_experiment() -> str:
    from steps.config import ConfigError, load_params

    try:
        return load_params().tracking.experiment
    except ConfigError:
        return "gptpipe"


def no_runs_message(filters: Filters, uri: str, experiments: list[str]) -> str:
    known = ", ".join(experiments) or "none yet"
    return (f"no runs match {filters.describe()} in {uri}.\n"
            f"Record some first (e.g. `dvc exp run -n cls-lora -S finetune_classifier.trainable=lora`), "
            f"or check --experiment (experiments in this store: {known}), --stage, --tag, --runs and --status.")

