"""`gptpipe serve` against in-process generation, and the serve at 1, 4 and 16 concurrent clients.

    python bench/serve.py [--requests 16] [--max-tokens 64] [--emb-dim 256] [--layers 6]

A GPT of the given size (random weights) with a BPE tokenizer trained here on the built-in
corpus is saved to a temporary model folder and served by `gptpipe serve` in a subprocess on
loopback. The same prompts then go through:

- in process: `generate()` one prompt after another (no HTTP, no batching);
- served: POST /v1/completions (greedy) from 1, 4 and 16 client threads, `--requests` in all.

Prints a table (tokens/s, p50/p95 request latency), then as its last line one JSON object with
`http_overhead` (served time / in-process time, one client: the cost of HTTP, JSON and the worker
thread; target at most 1.10) and `batching_gain` (tokens/s at 16 clients / at 1: what sharing
decode passes buys; target at least 3 on CPU). The served texts are checked against the
in-process ones (greedy): a mismatch voids the run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

from model.checkpoint import save_model
from model.config import GPTConfig
from model.generate import generate
from model.gpt import GPTModel, count_parameters
from steps.data.builtin_data import generate_corpus
from steps.tokenization.tokenizer import eot_id, train_bpe

CONCURRENCY = (1, 4, 16)


def model_folder(root: Path, args: argparse.Namespace) -> tuple[Path, GPTModel, list[str]]:
    """A served model folder, the same model in memory, and prompts from the corpus."""
    corpus = generate_corpus(seed=0, target_bytes=300_000)
    lines = [line for line in corpus.splitlines() if len(line) > 60]
    tok = train_bpe(lines, vocab_size=args.vocab)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.get_vocab_size(), context_length=args.context, emb_dim=args.emb_dim,
                    n_heads=args.heads, n_layers=args.layers, drop_rate=0.0, qkv_bias=False,
                    tie_embeddings=False, vocab_multiple=1)
    model = GPTModel(cfg).eval()
    folder = root / "bench-model"
    save_model(folder, model)
    tok.save(str(folder / "tokenizer.json"))
    # Prompts of different lengths (about 10 to 40 tokens): the batch is padded, as in real use.
    prompts = [line[: 40 + 17 * (i % 7)] for i, line in enumerate(lines[: args.requests])]
    return folder, model, prompts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path, port: int, args: argparse.Namespace) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pipelines", "serve", f"bench={folder}", "--port", str(port), "--device", "cpu",
           "--max-tokens", str(args.max_tokens), "--max-batch", str(max(CONCURRENCY))]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}  # the same intra-op threads as in process
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"gptpipe serve exited: {server.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("gptpipe serve did not answer within 120 s")


def in_process(model: GPTModel, tok, prompts: list[str], max_tokens: int) -> tuple[float, list[float], list[str], int]:
    """(wall seconds, per-prompt seconds, texts, tokens made) for generate() one prompt at a time."""
    eot = eot_id(tok)
    latencies, texts, made = [], [], 0
    start = time.perf_counter()
    for prompt in prompts:
        t0 = time.perf_counter()
        ids = tok.encode(prompt, add_special_tokens=False).ids
        out = generate(model, torch.tensor([ids]), max_tokens, model.cfg.context_length, eos_id=eot)[0, len(ids):]
        new = out.tolist()
        new = new[: new.index(eot)] if eot in new else new
        texts.append(tok.decode(new))
        made += len(new)
        latencies.append(time.perf_counter() - t0)
    return time.perf_counter() - start, latencies, texts, made


def served(url: str, prompts: list[str], clients: int, max_tokens: int) -> tuple[float, list[float], list[str], int]:
    """The same for POST /v1/completions from `clients` threads, each with its own connection."""
    def ask(client: httpx.Client, prompt: str) -> tuple[float, str, int]:
        t0 = time.perf_counter()
        r = client.post(f"{url}/v1/completions", json={"model": "bench", "prompt": prompt, "max_tokens": max_tokens,
                                                        "temperature": 0}, timeout=600)
        r.raise_for_status()
        body = r.json()
        return time.perf_counter() - t0, body["choices"][0]["text"], body["usage"]["completion_tokens"]

    def client_run(share: list[tuple[int, str]]) -> list[tuple[int, tuple[float, str, int]]]:
        with httpx.Client() as client:
            return [(i, ask(client, p)) for i, p in share]

    shares = [list(enumerate(prompts))[k::clients] for k in range(clients)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = dict(item for share in pool.map(client_run, shares) for item in share)
    wall = time.perf_counter() - start
    ordered = [results[i] for i in range(len(prompts))]
    return wall, [r[0] for r in ordered], [r[1] for r in ordered], sum(r[2] for r in ordered)


def percentile(values: list[float], q: float) -> float:
    ranked = sorted(values)
    return ranked[min(len(ranked) - 1, round(q * (len(ranked) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=16, help="requests per measurement (default: 16)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--emb-dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads, here and in the server (default: 1; on a busy shared machine two "
                             "threads waiting for each other make every small op slow)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="gptpipe-bench-serve-") as tmp:
        folder, model, prompts = model_folder(Path(tmp), args)
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        port = free_port()
        server = start_server(folder, port, args)
        url = f"http://127.0.0.1:{port}"
        try:
            load_before = round(os.getloadavg()[0], 2)
            in_process(model, tok, prompts[:2], 8)  # warm-up
            served(url, prompts[:2], 1, 8)
            rows = {"in process": in_process(model, tok, prompts, args.max_tokens)}
            for clients in CONCURRENCY:
                rows[f"served, {clients} client{'s' if clients > 1 else ''}"] = served(url, prompts, clients,
                                                                                        args.max_tokens)
            stats = httpx.get(f"{url}/stats").json()["models"]["bench"]["decode_batch_sizes"]
            load_after = round(os.getloadavg()[0], 2)
        finally:
            server.terminate()
            server.wait(timeout=30)

    reference = rows["in process"][2]
    for name, (_, _, texts, _) in rows.items():
        if texts != reference:
            raise SystemExit(f"{name}: the served texts differ from in-process generation: the benchmark is void")
    print(f"GPT {count_parameters(model) / 1e6:.1f} M parameters, {args.requests} prompts of ~10-40 tokens, "
          f"up to {args.max_tokens} new tokens each, greedy, {torch.get_num_threads()} threads, "
          f"load average {load_before} -> {load_after}")
    print(f"{'path':<22}{'seconds':>9}{'tokens':>8}{'tokens/s':>10}{'p50 s':>8}{'p95 s':>8}")
    rates = {}
    for name, (wall, lat, _, made) in rows.items():
        rates[name] = made / wall
        print(f"{name:<22}{wall:>9.2f}{made:>8}{rates[name]:>10.1f}{percentile(lat, 0.5):>8.2f}"
              f"{percentile(lat, 0.95):>8.2f}")
    print(f"decode passes by batch size (server): {dict(sorted(stats.items(), key=lambda kv: int(kv[0])))}")
    one, sixteen = rows["served, 1 client"], rows["served, 16 clients"]
    print(json.dumps({
        "http_overhead": round(one[0] / rows["in process"][0], 3),
        "batching_gain": round(rates["served, 16 clients"] / rates["served, 1 client"], 2),
        "tokens_per_s": {name: round(rate, 1) for name, rate in rates.items()},
        "p50_s": {name: round(percentile(r[1], 0.5), 3) for name, r in rows.items()},
        "p95_s": {name: round(percentile(r[1], 0.95), 3) for name, r in rows.items()},
        "requests": args.requests, "max_tokens": args.max_tokens, "tokens": sixteen[3],
        "load_avg_1m": [load_before, load_after],
    }))


if __name__ == "__main__":
    main()
