"""`gptpipe generate`, `gptpipe chat` and `gptpipe classify`: try a trained model from the terminal.

A model is a folder (`models/instruct`, a `gptpipe export-hf` output) or an MLflow URI
(`models:/gptpipe-instruct@champion`, `runs:/<run id>/model`); without one, each command uses
the pipeline's own output. Only argparse is imported with this module: torch and the model code
load when a command runs, MLflow only for an MLflow URI, Prefect never.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from steps.inference.loading import LoadedModel
    from steps.inference.streaming import Sampling

COMMANDS = ("generate", "chat", "classify")
CHAT_HELP = "/reset clears the history, /quit (or Ctrl-D) ends"


def add_parsers(sub) -> None:  # what ArgumentParser.add_subparsers() returned
    """The three commands' parsers."""
    model_help = ("a model folder or an MLflow URI (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model); "
                  "default: {}")
    p = sub.add_parser("generate", help="continue a prompt with a language model, streaming the text",
                       description="Continue a prompt (--prompt, else standard input) and print the new text "
                                   "as it is generated.")
    p.add_argument("model", nargs="?", help=model_help.format("models/pretrain"))
    p.add_argument("--prompt", help="the text to continue (default: standard input; '' starts from nothing)")
    add_sampling_options(p, temperature=0.8, top_k=40, max_new_tokens=100)
    add_device_option(p)

    p = sub.add_parser("chat", help="talk with the instruction model in the prompt style it was trained with",
                       description=f"An interactive chat, one message per line ({CHAT_HELP}). The history is kept "
                                   "within the context window: the oldest turns are dropped when it would overflow.")
    p.add_argument("model", nargs="?", help=model_help.format("models/instruct"))
    p.add_argument("--prompt-style", choices=["alpaca", "phi3"],
                   help="prompt layout (default: the one stored with the model)")
    add_sampling_options(p, temperature=0.0, top_k=40, max_new_tokens=128)
    add_device_option(p)

    p = sub.add_parser("classify", help="label texts with the classifier and show each class's probability",
                       description="Classify the texts given, a --file (lines, or a CSV/TSV/JSON(L)/Parquet "
                                   "--column) or standard input (one text per line).")
    p.add_argument("texts", nargs="*", metavar="[MODEL] TEXT",
                   help="the texts; the first is the model when it is an MLflow URI or a folder "
                        "(default model: models/classifier)")
    p.add_argument("--model", help=model_help.format("models/classifier"))
    p.add_argument("--file", type=Path, help="read the texts from this file")
    p.add_argument("--column", help="the text column of a CSV/TSV/JSON(L)/Parquet --file (default: text)")
    p.add_argument("--output", type=Path, help="also write the predictions to this .csv or .jsonl file")
    p.add_argument("--batch-size", type=positive_int, default=32, help="texts per forward pass (default: 32)")
    add_device_option(p)


def add_sampling_options(p: argparse.ArgumentParser, temperature: float, top_k: int, max_new_tokens: int) -> None:
    p.add_argument("--temperature", type=float, default=temperature,
                   help=f"0 = greedy, higher = more varied (default: {temperature})")
    p.add_argument("--top-k", type=int, default=top_k, help=f"sample among the k most likely tokens; 0 = all "
                                                           f"(default: {top_k})")
    p.add_argument("--top-p", type=float, default=1.0,
                   help="sample among the most likely tokens that make up this probability; 1 = all (default: 1)")
    p.add_argument("--max-new-tokens", type=positive_int, default=max_new_tokens,
                   help=f"at most this many tokens per answer (default: {max_new_tokens})")
    p.add_argument("--seed", type=int, help="a seed makes the sampled text repeatable")


def add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default: auto)")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    """Run one of COMMANDS; 2 (with one line on stderr) when the model or the input is wrong."""
    logging.basicConfig(format=f"gptpipe {args.command}: %(message)s", level=logging.WARNING)
    from steps.data.readers import DataError
    from steps.inference.loading import ModelSpecError

    try:
        if args.command == "generate":
            return generate_command(args)
        if args.command == "chat":
            return chat_command(args)
        return classify_command(args)
    except (ModelSpecError, DataError, ValueError, OSError) as err:
        print(f"gptpipe {args.command}: {err}", file=sys.stderr)
        return 2


def load_model(spec: str | None, command: str, device: str) -> LoadedModel:
    from steps.inference.loading import default_spec, load
    from steps.training.hardware import resolve_device

    return load(spec or default_spec(command), resolve_device(device))


def sampling(args: argparse.Namespace) -> Sampling:
    from steps.inference.streaming import Sampling

    return Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                    top_k=args.top_k or None, top_p=args.top_p, seed=args.seed)


def generate_command(args: argparse.Namespace) -> int:
    from steps.inference.streaming import Completion, encode

    settings = sampling(args)
    prompt = args.prompt
    if prompt is None:
        if sys.stdin.isatty():
            raise ValueError("give the text to continue with --prompt, or pipe it in")
        prompt = sys.stdin.read().rstrip("\n")
    loaded = load_model(args.model, "generate", args.device)
    if loaded.kind == "classifier":
        raise ValueError(f"{loaded.source} is a classifier: use `gptpipe classify`, or name a language model "
                         "(e.g. models/pretrain, models/instruct)")
    for piece in Completion(loaded, encode(loaded, prompt), settings):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def chat_command(args: argparse.Namespace) -> int:
    from steps.inference.chat import ChatSession, MessageTooLong
    from steps.inference.loading import chat_prompt_style

    settings = sampling(args)
    loaded = load_model(args.model, "chat", args.device)
    if loaded.kind == "classifier":
        raise ValueError(f"{loaded.source} is a classifier: use `gptpipe classify`, or name an instruction model "
                         "(e.g. models/instruct)")
    session = ChatSession(loaded, chat_prompt_style(loaded, args.prompt_style), args.max_new_tokens)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"Chatting with {loaded.name} ({session.style} prompts, {loaded.context_length} tokens of context). "
              f"{CHAT_HELP}.")
    for message in messages(interactive):
        if message.startswith("/"):
            if chat_control(message, session):
                break
            continue
        try:
            reply = session.ask(message, settings)
        except MessageTooLong as err:
            note(str(err))
            continue
        if reply.dropped:
            note(f"history cut: the oldest {reply.dropped} turn{'s' if reply.dropped > 1 else ''} no longer fit "
                 f"the {loaded.context_length}-token context window and were dropped")
        try:
            for piece in reply:
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:  # stops this reply, not the chat; the turn is not kept
            note("reply interrupted (not kept in the history)")
        sys.stdout.write("\n")
        sys.stdout.flush()
    return 0


def messages(interactive: bool):
    """Non-empty lines typed (with a prompt) or piped in, until end of input or Ctrl-C."""
    while True:
        try:
            line = input("> ") if interactive else sys.stdin.readline()
        except (EOFError, KeyboardInterrupt):
            return
        if not interactive and not line:
            return
        if line.strip():
            yield line.strip()


def chat_control(command: str, session) -> bool:
    """Handle a /command; True when the chat should end."""
    name = command.split()[0].lower()
    if name in ("/quit", "/exit"):
        return True
    if name == "/reset":
        session.reset()
        note("history cleared")
    else:
        note(f"unknown command {name}: {CHAT_HELP}")
    return False


def note(text: str) -> None:
    """A remark about the chat, not the model's words: on stderr, so stdout holds only replies."""
    print(f"[{text}]", file=sys.stderr, flush=True)


def classify_command(args: argparse.Namespace) -> int:
    from steps.inference.classify import (
        classify,
        read_texts,
        require_classifier,
        write_predictions,
    )

    spec, texts = args.model, list(args.texts)
    if spec is None and texts and looks_like_model(texts[0], len(texts)):
        spec, texts = texts[0], texts[1:]
    if args.file is not None:
        if texts:
            raise ValueError("give texts on the command line or --file, not both")
        texts = read_texts(args.file, args.column)
    elif not texts:
        if sys.stdin.isatty():
            raise ValueError("give the texts to classify, --file FILE, or pipe them in one per line")
        texts = [line.rstrip("\r\n") for line in sys.stdin if line.strip()]
    loaded = load_model(spec, "classify", args.device)
    require_classifier(loaded)
    predictions = classify(loaded, texts, args.batch_size)
    for text, (label, probs) in zip(texts, predictions):
        shown = "\t".join(f"{name}={p:.4f}" for name, p in probs.items())
        print(f"{label}\t{shown}\t{' '.join(text.split())}")
    if args.output is not None:
        write_predictions(args.output, texts, predictions)
        print(f"{args.output}: {len(predictions)} predictions", file=sys.stderr)
    return 0


def looks_like_model(first: str, count: int) -> bool:
    """Whether `gptpipe classify`'s first argument names the model rather than a text: an MLflow
    URI, a folder, or (when texts follow) a path-like word that is not there (its error says so)."""
    from steps.inference.loading import (
        is_mlflow_uri,  # torch-free enough: only when classifying
    )

    if is_mlflow_uri(first) or Path(first).is_dir():
        return True
    return count > 1 and "/" in first and not any(c.isspace() for c in first)
