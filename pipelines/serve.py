"""`gptpipe serve`: the models over an OpenAI-compatible HTTP API (steps/serving/), on uvicorn.

    gptpipe serve                                   # the pipeline's models that exist
    gptpipe serve models/instruct models:/gptpipe-classifier@champion --port 8000
    gptpipe serve chat=models/instruct              # served (and asked for) as "chat"

Only argparse is imported with this module: torch, FastAPI and uvicorn load when the command runs.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pipelines.inference import add_device_option, positive_int

DEFAULT_PORT = 8000


def add_parser(sub) -> None:  # what ArgumentParser.add_subparsers() returned
    p = sub.add_parser("serve", help="serve models over an OpenAI-compatible HTTP API (completions, chat, classify)",
                       description="Serve models over HTTP: GET /v1/models, POST /v1/completions, "
                                   "/v1/chat/completions (stream: true for server-sent events) and /v1/classify. "
                                   "Requests that arrive together share forward passes.")
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="a model folder or an MLflow URI (models:/NAME@ALIAS, runs:/RUN_ID/model), optionally as "
                        "NAME=MODEL to serve it under NAME; default: whichever of models/pretrain, "
                        "models/instruct and models/classifier exist")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine "
                                                        "only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    p.add_argument("--max-tokens", type=positive_int, default=256,
                   help="most tokens one request may have generated; also what a request that names no max_tokens "
                        "gets (default: 256)")
    p.add_argument("--max-prompt-tokens", type=positive_int, default=None,
                   help="longest prompt in tokens (default: the model's context length)")
    p.add_argument("--max-batch", type=positive_int, default=16,
                   help="most sequences a model decodes together (default: 16)")
    p.add_argument("--max-texts", type=positive_int, default=64,
                   help="most texts one /v1/classify request may send (default: 64)")
    add_device_option(p)


def serve_command(args: argparse.Namespace) -> int:
    """Load the models and serve until interrupted; 2 (with one line on stderr) when a model or a
    setting is wrong."""
    logging.basicConfig(format="gptpipe serve: %(message)s", level=logging.INFO)
    from steps.inference.loading import ModelSpecError

    try:
        app = build_app(args)
    except (ModelSpecError, ValueError, OSError) as err:
        print(f"gptpipe serve: {err}", file=sys.stderr)
        return 2
    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def build_app(args: argparse.Namespace):  # -> fastapi.FastAPI, imported late
    from steps.serving.app import Limits, create_app

    limits = Limits(max_prompt_tokens=args.max_prompt_tokens, max_tokens=args.max_tokens,
                    max_batch=args.max_batch, max_texts=args.max_texts)
    return create_app(load_models(args.models, args.device), limits)


def load_models(specs: list[str], device: str) -> list:
    """The models named (NAME=SPEC or SPEC), or the pipeline's own that exist."""
    from steps import layout
    from steps.inference.loading import URI_SCHEME, load
    from steps.training.hardware import resolve_device

    if not specs:
        specs = [str(path) for path in (layout.PRETRAIN_MODEL, layout.INSTRUCT_MODEL, layout.CLASSIFIER_MODEL)
                 if path.is_dir()]
        if not specs:
            raise ValueError("no models to serve: models/pretrain, models/instruct and models/classifier do not exist "
                             "yet; run `make pipeline` first, or name a model folder or an MLflow URI")
    loaded = []
    for spec in specs:
        name, _, path = spec.partition("=") if "=" in spec and not URI_SCHEME.match(spec) else ("", "", spec)
        loaded.append(load(path, resolve_device(device), name=name or None))
        print(f"gptpipe serve: {loaded[-1].name}: {loaded[-1].kind} model from {loaded[-1].source}", file=sys.stderr)
    return loaded
