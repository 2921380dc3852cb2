"""The book's chapter-5 pretraining run through our `pretrain` stage and through a plain
re-implementation of the book's model and `train_model_simple` loop, back to back.

    python bench/book_ch05.py                 # the whole workload (minutes on a CPU)
    python bench/book_ch05.py --steps 6       # 6 optimizer steps on each side: a check of the harness
    python bench/book_ch05.py --only book     # one side only (--only ours); --threads N for torch
    python bench/book_ch05.py --only ours --set pretrain.init=gpt2   # one difference from the book

Our side: a temporary copy of the project (bench/overhead.py's copy and set-up), `gptpipe profile
book`, the corpus and the GPT-2 BPE files pointed at ../shared/data (served from loopback, so the
profile's pinned URLs and checksums are kept), then `dvc repro pretrain`. Its figures are the
stage's own (reports/pretrain.json: steps, tokens seen, losses; reports/timings/pretrain.json:
tokens/s of the training loop; reports/plots/pretrain/loss.csv: the loss curve), not the
process's wall time, which includes start-up.

The book's side is written here from the book's description (not its code): GPT_CONFIG_124M as
plain modules (attention with a causal mask buffer, LayerNorm with scale and shift, tanh GELU,
pre-LN blocks, PyTorch's default initialisation, a separate output head), fixed windows of
`seq_len` tokens at stride `seq_len` over the text's first 1 - tokenize.val_fraction of
characters (90 %), a shuffled DataLoader, AdamW with PyTorch's default betas, evaluation every
`eval_interval` steps on 5 train batches and the validation batches, a greedy 50-token sample at
each epoch's end, in fp32. Its
workload (model size, dropout, q/k/v bias, lr, weight decay, batch, window, steps, split) is read
from the params.yaml the profile produced, so the two sides cannot drift apart; what only the
book fixes (betas, decay of every parameter, eval_iter 5, 50-token greedy samples, seed 123) is a
constant below, and where our params choose otherwise the table says so.

Tokens/s on both sides is tokens trained on / seconds of the training loop, evaluations and
samples included (the book's loop does both inside it). The train loss of both is the book's
measure, the mean of 5 training batches in eval mode (ours from the saved model, after the run).
A whole run also says whether each side's final losses land within BAND of the book's printed ones. The last line printed is one JSON object: speed_ratio
(ours / book tokens/s), both final validation and train losses, the CPU and the load.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
VERDICT = SHARED / "book" / "the-verdict.txt"
GPT2_FILES = SHARED / "gpt2"

# What only the book fixes (its chapter-5 code, not params.yaml).
BOOK_SEED = 123               # torch.manual_seed(123) before the model is built
BOOK_BETAS = (0.9, 0.999)     # torch.optim.AdamW's defaults: the book passes lr and weight_decay only
BOOK_EVAL_ITER = 5            # batches of each loader averaged per evaluation
BOOK_SAMPLE_TOKENS = 50       # greedy tokens generated at each epoch's end


# --- the book's model ---------------------------------------------------------------------------

@dataclass(frozen=True)
class BookConfig:
    """GPT_CONFIG_124M's keys, in the book's terms."""

    vocab_size: int = 50257
    context_length: int = 1024
    emb_dim: int = 768
    n_heads: int = 12
    n_layers: int = 12
    drop_rate: float = 0.1
    qkv_bias: bool = False


class MultiHeadAttention(nn.Module):
    """Causal self-attention written out: scores, mask, softmax, dropout, weighted values."""

    def __init__(self, cfg: BookConfig) -> None:
        super().__init__()
        d = cfg.emb_dim
        self.n_heads, self.head_dim = cfg.n_heads, d // cfg.n_heads
        self.query = nn.Linear(d, d, bias=cfg.qkv_bias)
        self.key = nn.Linear(d, d, bias=cfg.qkv_bias)
        self.value = nn.Linear(d, d, bias=cfg.qkv_bias)
        self.proj = nn.Linear(d, d)
        self.dropout = nn.Dropout(cfg.drop_rate)
        # 1 above the diagonal: the future positions a token may not attend to.
        self.register_buffer("mask", torch.triu(torch.ones(cfg.context_length, cfg.context_length), diagonal=1))

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.heads(self.query(x)), self.heads(self.key(x)), self.heads(self.value(x))
        scores = q @ k.transpose(2, 3)  # (B, H, T, T)
        scores = scores.masked_fill(self.mask.bool()[:t, :t], -torch.inf)
        weights = self.dropout(torch.softmax(scores / self.head_dim**0.5, dim=-1))
        out = (weights @ v).transpose(1, 2).contiguous().view(b, t, d)  # (B, T, C)
        return self.proj(out)


class LayerNorm(nn.Module):
    """Normalise over the features, then a learned scale and shift (biased variance, eps 1e-5)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.shift = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        return self.scale * (x - mean) / torch.sqrt(var + 1e-5) + self.shift


class GELU(nn.Module):
    """GELU's tanh approximation, as GPT-2 used it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


class FeedForward(nn.Module):
    def __init__(self, cfg: BookConfig) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(cfg.emb_dim, 4 * cfg.emb_dim), GELU(),
                                    nn.Linear(4 * cfg.emb_dim, cfg.emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TransformerBlock(nn.Module):
    """Pre-LN: x + dropout(attention(norm(x))), then x + dropout(feed-forward(norm(x)))."""

    def __init__(self, cfg: BookConfig) -> None:
        super().__init__()
        self.norm1, self.att = LayerNorm(cfg.emb_dim), MultiHeadAttention(cfg)
        self.norm2, self.ff = LayerNorm(cfg.emb_dim), FeedForward(cfg)
        self.drop_shortcut = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_shortcut(self.att(self.norm1(x)))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))


class BookGPT(nn.Module):
    """Token + position embeddings, the blocks, a final norm and an untied output head; every
    weight at PyTorch's default initialisation."""

    def __init__(self, cfg: BookConfig) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.emb_dim)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.blocks = nn.Sequential(*(TransformerBlock(cfg) for _ in range(cfg.n_layers)))
        self.final_norm = LayerNorm(cfg.emb_dim)
        self.out_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(t, device=idx.device))  # (B, T, C)
        x = self.blocks(self.drop_emb(x))
        return self.out_head(self.final_norm(x))  # (B, T, V)


# --- the book's data and loop ------------------------------------------------------------------

class WindowDataset(Dataset):
    """Input windows of `max_length` tokens every `stride` tokens; targets shifted by one."""

    def __init__(self, ids: list[int], max_length: int, stride: int) -> None:
        starts = range(0, len(ids) - max_length, stride)
        self.inputs = [torch.tensor(ids[s : s + max_length]) for s in starts]
        self.targets = [torch.tensor(ids[s + 1 : s + max_length + 1]) for s in starts]

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[i], self.targets[i]


def book_loaders(text: str, encode, train_ratio: float, batch_size: int, max_length: int
                 ) -> tuple[DataLoader, DataLoader]:
    """The book's split (the first `train_ratio` of the characters trains) and its two loaders:
    stride = window length, training shuffled with its last partial batch dropped."""
    cut = int(train_ratio * len(text))

    def loader(part: str, train: bool) -> DataLoader:
        data = WindowDataset(encode(part), max_length, stride=max_length)
        return DataLoader(data, batch_size=batch_size, shuffle=train, drop_last=train, num_workers=0)

    return loader(text[:cut], True), loader(text[cut:], False)


def loss_batch(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, device: torch.device) -> torch.Tensor:
    logits = model(inputs.to(device))  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), targets.to(device).flatten())


def loss_loader(model: nn.Module, loader: DataLoader, device: torch.device, num_batches: int | None = None) -> float:
    """Mean loss of the loader's first `num_batches` batches (all of them by default)."""
    if len(loader) == 0:
        return float("nan")
    n = len(loader) if num_batches is None else min(num_batches, len(loader))
    total = 0.0
    for i, (inputs, targets) in enumerate(loader):
        if i == n:
            break
        total += loss_batch(model, inputs, targets, device).item()
    return total / n


@torch.no_grad()
def greedy(model: BookGPT, ids: torch.Tensor, new_tokens: int, context: int) -> torch.Tensor:
    """Append the most likely next token `new_tokens` times, re-reading the last `context` tokens."""
    for _ in range(new_tokens):
        logits = model(ids[:, -context:])[:, -1, :]  # (B, V)
        ids = torch.cat([ids, logits.argmax(dim=-1, keepdim=True)], dim=1)
    return ids


@dataclass
class BookRun:
    """What the book's loop prints, kept: evaluations, samples, tokens and seconds."""

    evals: list[dict[str, float]] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    tokens: int = 0
    steps: int = 0
    seconds: float = 0.0


def train_simple(model: BookGPT, train_loader: DataLoader, val_loader: DataLoader, optimizer: torch.optim.Optimizer,
                 device: torch.device, epochs: int, eval_freq: int, prompt: str, tokenizer,
                 max_steps: int | None = None) -> BookRun:
    """The book's `train_model_simple`: epochs over the shuffled loader, an evaluation whenever the
    step count (from 0) is a multiple of `eval_freq`, a sample at each epoch's end. `max_steps`
    stops early (a short check); a run stopped inside an epoch still prints one sample."""
    run = BookRun()
    context = model.pos_emb.weight.shape[0]
    prompt_ids = torch.tensor([tokenizer.encode(prompt)], device=device)

    def evaluate() -> None:
        model.eval()
        with torch.no_grad():
            train_loss = loss_loader(model, train_loader, device, BOOK_EVAL_ITER)
            val_loss = loss_loader(model, val_loader, device, BOOK_EVAL_ITER)
        model.train()
        run.evals.append({"step": run.steps, "tokens": run.tokens, "train_loss": train_loss, "val_loss": val_loss})
        print(f"  book step {run.steps:>3}: train {train_loss:.3f}, val {val_loss:.3f}", flush=True)

    def sample() -> None:
        model.eval()
        text = tokenizer.decode(greedy(model, prompt_ids, BOOK_SAMPLE_TOKENS, context)[0].tolist())
        model.train()
        run.samples.append(text)
        print(f"  book sample: {text!r}", flush=True)

    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for inputs, targets in train_loader:
            optimizer.zero_grad()
            loss = loss_batch(model, inputs, targets, device)
            loss.backward()
            optimizer.step()
            run.tokens += inputs.numel()
            run.steps += 1
            if (run.steps - 1) % eval_freq == 0:  # the book's global_step starts at -1: steps 0, 5, 10, ...
                evaluate()
            if run.steps == max_steps:
                break
        sample()
        if run.steps == max_steps:
            break
    run.seconds = time.perf_counter() - start
    return run


# --- the workload, from params.yaml ------------------------------------------------------------

@dataclass(frozen=True)
class Workload:
    """The chapter-5 settings both sides train with, as the profile's params.yaml gives them."""

    model: BookConfig
    lr: float
    weight_decay: float
    batch_size: int
    seq_len: int
    epochs: int | None
    """Passes over the training windows (the `pretrain.epochs` param, where params.yaml has it)."""
    max_steps: int | None
    """Optimizer steps when there is no epoch count."""
    eval_interval: int
    val_fraction: float
    sample_prompt: str
    device: str

    def book_epochs(self, batches_per_epoch: int) -> int:
        if self.epochs is not None:
            return self.epochs
        return math.ceil((self.max_steps or 0) / batches_per_epoch)


def workload(params) -> Workload:
    """The book side's settings from a validated `steps.config.Params`; the book's model is built
    with the window length as its context, as chapter 5 shortens GPT_CONFIG_124M's to 256."""
    cfg = params.pretrain
    m = params.model
    seq_len = params.pretrain_seq_len
    epochs = cfg.epochs
    return Workload(
        model=BookConfig(vocab_size=50257, context_length=seq_len, emb_dim=m.emb_dim, n_heads=m.n_heads,
                         n_layers=m.n_layers, drop_rate=m.drop_rate, qkv_bias=m.qkv_bias),
        lr=cfg.lr, weight_decay=cfg.weight_decay, batch_size=cfg.batch_size, seq_len=seq_len,
        epochs=epochs, max_steps=None if epochs is not None else cfg.max_steps, eval_interval=cfg.eval_interval,
        val_fraction=params.tokenize.val_fraction, sample_prompt=cfg.sample_prompt, device=cfg.device)


# GPT_CONFIG_124M and chapter 5's training settings: where the profile's workload (both sides) strays
# from them, the run is not the book's and the table says so.
BOOK_WORKLOAD = {"emb_dim": 768, "n_heads": 12, "n_layers": 12, "drop_rate": 0.1, "qkv_bias": False,
                 "batch_size": 2, "seq_len": 256, "weight_decay": 0.1}


def workload_differences(w: Workload) -> list[str]:
    """Where both sides' workload, as params.yaml gives it, is not the book's chapter 5."""
    ours = {**vars(w.model), "batch_size": w.batch_size, "seq_len": w.seq_len, "weight_decay": w.weight_decay}
    return [f"{key}: {ours[key]!r} (the book: {value!r})" for key, value in BOOK_WORKLOAD.items() if ours[key] != value]


def differences(params) -> list[str]:
    """Where our stage's params choose otherwise than the book's code: what the comparison is of."""
    cfg = params.pretrain.model_dump()
    book = {"min_lr_ratio": 1.0, "warmup_steps": 0, "grad_clip": 0.0, "betas": list(BOOK_BETAS), "decay": "all",
            "init": "pytorch", "precision": "fp32", "epochs": 10}
    found = [f"pretrain.{key}: {cfg[key]!r} (the book: {value!r})" for key, value in book.items()
             if key in cfg and _differs(cfg[key], value)]
    if params.model.context_length != params.pretrain_seq_len:
        found.append(f"model.context_length: {params.model.context_length} (the book's chapter 5: "
                     f"{params.pretrain_seq_len}, its window length)")
    return found


def _differs(ours, book) -> bool:
    if isinstance(book, list):
        return list(ours) != book
    return ours != book


def gpt2_encoder(params):
    """tiktoken's GPT-2 encoding from the BPE files params.yaml points at (the tokenize stage's way)."""
    from steps.tokenization.gpt2_bpe import gpt2_encoding

    tok = params.tokenize
    return gpt2_encoding(Path(tok.encoder_json) if tok.encoder_json else None,
                         Path(tok.vocab_bpe) if tok.vocab_bpe else None)


def run_book(params, steps: int | None) -> dict:
    """The book's chapter 5 on this workload: loaders, seed, model, AdamW, `train_simple`."""
    from steps.training.hardware import resolve_device

    w = workload(params)
    enc = gpt2_encoder(params)
    encode = functools.partial(enc.encode, allowed_special={"<|endoftext|>"})
    train_loader, val_loader = book_loaders(VERDICT.read_text(encoding="utf-8"), encode, 1.0 - w.val_fraction,
                                            w.batch_size, w.seq_len)
    device = resolve_device(w.device)
    torch.manual_seed(BOOK_SEED)
    model = BookGPT(w.model).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=w.lr, weight_decay=w.weight_decay)
    epochs = w.book_epochs(len(train_loader))
    max_steps = steps if steps is not None else w.max_steps
    print(f"book: {sum(p.numel() for p in model.parameters()):,} parameters, {len(train_loader)} training batches "
          f"of {w.batch_size} x {w.seq_len}, {len(val_loader)} validation batch(es), {epochs} epoch(s)"
          + (f", stopping at step {max_steps}" if max_steps else ""), flush=True)
    run = train_simple(model, train_loader, val_loader, optimizer, device, epochs, w.eval_interval,
                       w.sample_prompt, enc, max_steps=max_steps)
    last = run.evals[-1]
    return {"tokens_per_s": run.tokens / run.seconds, "seconds": run.seconds, "steps": run.steps,
            "tokens": run.tokens, "train_loss": last["train_loss"], "val_loss": last["val_loss"],
            "min_val_loss": min(e["val_loss"] for e in run.evals), "sample": run.samples[-1]}


# --- our stage in a temporary project ---------------------------------------------------------

@contextlib.contextmanager
def serving(folder: Path) -> Iterator[str]:
    """A loopback HTTP server over `folder` while the block runs; its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def book_project(work: Path, env: dict[str, str], url: str, steps: int | None,
                 overrides: list[str] = ()) -> None:
    """`gptpipe profile book` in the copy, then the book's files from `url` and ../shared's GPT-2 BPE;
    `steps`: that many optimizer steps (a short check); `overrides`: `section.key=value` (YAML) params
    set after the profile (one difference from the book at a time, e.g. pretrain.init=gpt2)."""
    done = subprocess.run([sys.executable, "-m", "pipelines", "profile", "book"], cwd=work, env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"gptpipe profile book failed:\n{done.stdout}{done.stderr}")
    params = yaml.safe_load((work / "params.yaml").read_text())
    for dataset in params["download"].values():
        if isinstance(dataset, dict) and dataset.get("source", {}).get("kind") == "url":
            dataset["source"]["url"] = f"{url}/{dataset['source']['url'].rsplit('/', 1)[-1]}"
    params["tokenize"].update(encoder_json=str(GPT2_FILES / "encoder.json"), vocab_bpe=str(GPT2_FILES / "vocab.bpe"))
    if steps is not None:
        params["pretrain"]["max_steps"] = steps
        if params["pretrain"].get("epochs") is not None:
            # Epochs count whole passes, max_steps any number of steps, and the stage takes exactly
            # one: the short check reads random windows on our side (the book's side stops at step N).
            params["pretrain"]["epochs"] = None
            print(f"--steps {steps}: ours trains on random windows (pretrain.epochs counts whole epochs only)")
    for override in overrides:
        key, _, value = override.partition("=")
        section, _, name = key.partition(".")
        if not value or section not in params or not isinstance(params[section], dict) or name not in params[section]:
            raise SystemExit(f"--set {override!r}: write section.key=value with a key params.yaml has, "
                             "e.g. pretrain.init=gpt2")
        params[section][name] = yaml.safe_load(value)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_ours(work: Path, env: dict[str, str], log_path: Path) -> dict:
    """`dvc repro pretrain` in the copy; the stage's own figures."""
    with log_path.open("w") as log:
        code = subprocess.run(["dvc", "repro", "pretrain"], cwd=work, env=env, stdout=log,
                              stderr=subprocess.STDOUT, text=True, check=False).returncode
    output = log_path.read_text()
    if code != 0:
        raise RuntimeError(f"dvc repro pretrain failed ({code}); the end of {log_path}:\n{output[-6000:]}")
    return stage_figures(work, output)


def eval_mode_train_loss(work: Path, batch_size: int, seq_len: int) -> float:
    """The trained model's loss on 5 batches of training windows in eval mode: the book's "Train
    loss" (calc_loss_loader(train_loader, num_batches=5)), which the stage's own figure (the mean
    training-mode loss, dropout on, of the last logging window) is not."""
    import itertools

    from model.checkpoint import load_model
    from steps import layout
    from steps.tasks.language_modeling import epoch_windows, mean_loss
    from steps.tokenization.tokenizer import read_tokens

    model, _ = load_model(work / layout.PRETRAIN_MODEL)
    model.eval()
    tokens = read_tokens(work / layout.TRAIN_BIN, model.cfg.vocab_size)
    batches = list(itertools.islice(epoch_windows(tokens, batch_size, seq_len, 0), 5))
    return mean_loss(model, batches, torch.device("cpu"))


BOOK_FINAL = {"train_loss": 0.391, "val_loss": 6.452}
"""The book's printed losses at its last evaluation (chapter 5: "Ep 10 (Step 000085): Train loss
0.391, Val loss 6.452", after 86 of the 90 updates)."""
BAND = {"train_loss": 0.6, "val_loss": 0.35}
"""How far a full run's final losses may land from BOOK_FINAL: the book's own printings of this run
differ by 0.37 (train 0.391 / 0.762) and 0.08 (val 6.452 / 6.372), and seeds move it further."""


def in_band(result: dict) -> dict[str, bool]:
    return {name: abs(result[name] - book) <= BAND[name] for name, book in BOOK_FINAL.items()}


def stage_figures(work: Path, output: str) -> dict:
    """The pretrain stage's own figures in project `work`; its samples from the log `output`."""
    from steps import layout

    metrics = json.loads((work / layout.metrics_file("pretrain")).read_text())
    timing = json.loads((work / layout.timings_file("pretrain")).read_text())
    curve = (work / layout.plots_dir("pretrain") / "loss.csv").read_text().splitlines()
    header = curve[0].split(",")
    val = [float(row.split(",")[header.index("val_loss")]) for row in curve[1:]
           if row.split(",")[header.index("val_loss")] not in ("", "nan")]
    samples = [line.split("sample: ", 1)[1] for line in output.splitlines() if "sample: " in line]
    speed = timing["tokens_per_s"]  # a timing: the stage keeps it beside its metrics, outside DVC
    return {"tokens_per_s": speed, "seconds": metrics["tokens_seen"] / speed,
            "steps": metrics["steps"], "tokens": metrics["tokens_seen"], "train_loss": metrics.get("train_loss"),
            "val_loss": metrics["val_loss"], "min_val_loss": min(val) if val else metrics["val_loss"],
            "sample": samples[-1] if samples else "", "compute_seconds": timing["compute_seconds"]}


# --- the report -------------------------------------------------------------------------------

def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def table(results: dict[str, dict]) -> str:
    rows = [("tokens/s", "tokens_per_s", "{:.1f}"), ("training loop s", "seconds", "{:.1f}"),
            ("steps", "steps", "{}"), ("tokens", "tokens", "{:,}"), ("final train loss", "train_loss", "{:.3f}"),
            ("final val loss", "val_loss", "{:.3f}"), ("lowest val loss", "min_val_loss", "{:.3f}"),
            ("stage computation s", "compute_seconds", "{:.1f}")]
    names = list(results)
    out = [f"{'':<18}" + "".join(f"{name:>14}" for name in names)]
    for label, key, fmt in rows:
        cells = [fmt.format(results[n][key]) if results[n].get(key) is not None else "-" for n in names]
        out.append(f"{label:<18}" + "".join(f"{c:>14}" for c in cells))
    for name in names:
        out.append(f"{name} sample: {results[name]['sample']!r}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, help="N optimizer steps on each side (a short check, not the figure)")
    parser.add_argument("--threads", type=int, help="torch threads on each side (default: torch's own)")
    parser.add_argument("--only", choices=["book", "ours"], help="run one side only")
    parser.add_argument("--keep", action="store_true", help="keep the temporary project (its path is printed)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a param of our side after the profile (repeatable), e.g. pretrain.init=gpt2")
    parser.add_argument("--prefect-home", type=Path,
                        default=Path(tempfile.gettempdir()) / "gptpipe-bench" / "prefect-home")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be at least 1")
    for needed in (VERDICT, GPT2_FILES / "encoder.json", GPT2_FILES / "vocab.bpe"):
        if not needed.is_file():
            parser.error(f"{needed} is missing: this bench reads the book's data and GPT-2's BPE files from "
                         f"{SHARED} (beside the checkout)")

    sys.path.insert(0, str(ROOT))  # run as a script from anywhere
    from bench.overhead import bench_env, copy_project, set_up
    from steps.config import load_params

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="gptpipe-book-ch05-"))
    work = tmp / "repo"
    work.mkdir()
    args.prefect_home.mkdir(parents=True, exist_ok=True)
    env = bench_env(args.prefect_home)
    env["GPTPIPE_CACHE"] = str(tmp / "download-cache")  # the shared files, not the user's cache
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    load_before = os.getloadavg()
    print(f"project copy: {work}  load: {load_before}  torch threads: {torch.get_num_threads()}", flush=True)
    results: dict[str, dict] = {}
    try:
        with serving(VERDICT.parent) as url:
            copy_project(work, quick=False)
            book_project(work, env, url, args.steps, args.set)
            params = load_params(work / "params.yaml")
            for line in workload_differences(workload(params)):
                print(f"both sides differ from the book's chapter 5: {line}")
            for line in differences(params):
                print(f"ours differs from the book: {line}")
            if args.only != "book":
                print(f"set-up (Prefect server, mlflow.db; outside the timing): {set_up(work, env):.1f} s", flush=True)
                print("ours: dvc repro pretrain ...", flush=True)
                results["ours"] = run_ours(work, env, tmp / "ours.log")
                results["ours"]["train_loss"] = eval_mode_train_loss(work, params.pretrain.batch_size,
                                                                     params.pretrain_seq_len)
        if args.only != "ours":
            results["book"] = run_book(params, args.steps)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print(table(results))
    summary = {"cpu": cpu_name(), "torch_threads": torch.get_num_threads(), "steps_option": args.steps,
               "load_before": load_before, "load_after": os.getloadavg()}
    for name, r in results.items():
        summary.update({f"{name}_tokens_per_s": round(r["tokens_per_s"], 2), f"{name}_seconds": round(r["seconds"], 2),
                        f"{name}_val_loss": r["val_loss"], f"{name}_train_loss": r["train_loss"],
                        f"{name}_min_val_loss": r["min_val_loss"], f"{name}_steps": r["steps"]})
    if args.steps is None:  # the whole run: do the final losses land where the book's did?
        for name, r in results.items():
            band = in_band(r)
            summary[f"{name}_in_band"] = all(band.values())
            print(f"{name}: final train loss {r['train_loss']:.3f}, val {r['val_loss']:.3f}; the book printed "
                  f"{BOOK_FINAL['train_loss']} and {BOOK_FINAL['val_loss']} (bands +-{BAND['train_loss']}, "
                  f"+-{BAND['val_loss']}): " + ", ".join(f"{k} {'in' if v else 'OUT OF'} band" for k, v in band.items()))
    if len(results) == 2:
        summary = {"speed_ratio": round(results["ours"]["tokens_per_s"] / results["book"]["tokens_per_s"], 3), **summary}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
