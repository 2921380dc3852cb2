"""`gptpipe <stage>` runs one stage's flow; `gptpipe repro` runs the whole DVC pipeline."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

# Stage name -> (module, flow function). Modules are imported on demand: each stage process
# pays only for its own imports.
STAGES: dict[str, tuple[str, str]] = {
    "download": ("pipelines.download", "download_flow"),
    "tokenize": ("pipelines.tokenize", "tokenize_flow"),
    "pretrain": ("pipelines.pretrain", "pretrain_flow"),
    "finetune_classifier": ("pipelines.finetune_classifier", "finetune_classifier_flow"),
    "finetune_instruct": ("pipelines.finetune_instruct", "finetune_instruct_flow"),
    "evaluate": ("pipelines.evaluate", "evaluate_flow"),
}


def run_flow(stage: str, params_path: str) -> dict[str, float]:
    module, name = STAGES[stage]
    flow = getattr(importlib.import_module(module), name)
    return flow(params_path=params_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gptpipe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for stage in STAGES:
        p = sub.add_parser(stage, help=f"run the {stage} stage (normally through `dvc repro`)")
        p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sub.add_parser("repro", help="run the whole pipeline through DVC (only what changed reruns)")
    sub.add_parser("stages", help="list the stages")
    prof = sub.add_parser("profile", help="switch params.yaml to a shipped profile (builtin, book, book-small)")
    prof.add_argument("name", nargs="?", help="profile name; omit to list them")
    prof.add_argument("--params", default="params.yaml", help="params file to edit (default: params.yaml)")
    args = parser.parse_args(argv)

    if args.command == "stages":
        print("\n".join(STAGES))
        return 0
    if args.command == "repro":
        return subprocess.call(["dvc", "repro"])
    from steps.config import ConfigError, load_params

    if args.command == "profile":
        return _profile(args.name, args.params)

    try:
        # Validate before the flow starts: a typo should not cost a Prefect server start-up.
        load_params(args.params)
        run_flow(args.command, args.params)
    except ConfigError as err:
        print(f"gptpipe: {err}", file=sys.stderr)
        return 2
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


if __name__ == "__main__":
    sys.exit(main())
