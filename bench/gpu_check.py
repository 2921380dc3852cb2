"""Every GPU check this project cares about, in one run of at most 8 minutes: for the day a CUDA
machine is lent. Run it through `bench/gpu_check.sh` (it picks the interpreter and the paths):

    bench/gpu_check.sh                          # every check; a dry run where there is no CUDA
    bench/gpu_check.sh --checks sdpa,compile    # some of them
    bench/gpu_check.sh --cap compile=240        # one check's own time cap, in seconds

The checks: bf16 matmul TFLOP/s; fp32 matmul with TF32 off and on; fused AdamW (runs, matches
foreach, step time against foreach); flash attention through SDPA with the flash backend alone
(bf16, causal; time against the math backend; and our GPTModel's forward + backward under flash
alone); torch.compile of our GPT through train() (compile time, step time against eager); a 124M
pretraining step's tokens/s and MFU through our training code (bench/pretrain.py --preset 124m);
FSDP through train() under torchrun when more than one GPU is visible. The MFU goal: at least
45 % for the 124M model on an H100 (peaks: steps/training/throughput.py).

Each check runs in a child process of its own, with its own time cap, inside an overall budget
(--total-s, 480 s): a hung compile, an out-of-memory or a CUDA error that spoils the process's
context stops that check alone, which is reported with its error while the others still run.
Prints a table, then as its last line one JSON object (fields: docs/benchmarks.md). Exit status 1
when a check failed, 0 otherwise (a skipped check is not a failure).

Without CUDA it is a dry run: it says which checks it skips and why, runs the one check that means
something on a CPU (`plan`: imports, the 124M config built on the meta device, its FLOPs per token
and the tokens/s the MFU goal asks of an H100) and prints the JSON line with "cuda": false.
`--smoke` instead runs the GPU checks' own code on the CPU at toy sizes, to test this script
(its figures mean nothing).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import itertools
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN_BENCH = ROOT / "bench" / "pretrain.py"
TOTAL_S = 480.0  # the limit: every check in at most 8 minutes
MFU_GOAL = 0.45  # GPT 124M on an H100 (issue 21)
GOAL_GPU = "H100"  # its key in steps/training/throughput.py's PEAK_FLOPS
Result = dict[str, Any]


@dataclass(frozen=True)
class Sizes:
    """How big each check's work is: real sizes on a GPU, toy ones for --smoke on a CPU."""

    preset: str  # bench/pretrain.py's PRESETS key
    batch_size: int  # sequences per step (per GPU under FSDP)
    seq_len: int
    matmul_n: int  # square matmuls of n x n
    attention: tuple[int, int, int, int]  # (B, H, T, D) for the bare SDPA timing
    iters: int  # timed calls of each micro-benchmark
    steps: int  # timed training steps (after one warm-up / compile step)


GPU_SIZES = Sizes(preset="124m", batch_size=16, seq_len=1024, matmul_n=8192, attention=(8, 12, 1024, 64),
                  iters=20, steps=10)
SMOKE_SIZES = Sizes(preset="small", batch_size=2, seq_len=32, matmul_n=128, attention=(1, 2, 32, 16),
                    iters=2, steps=2)


@dataclass(frozen=True)
class Context:
    """What a check runs on, as the parent's flags set it."""

    device: torch.device
    sizes: Sizes
    smoke: bool

    @property
    def amp(self) -> torch.dtype:
        return torch.bfloat16  # every GPU this targets (Ampere and newer) has bf16; so do CPUs


# --- helpers the checks share ------------------------------------------------------------------


def load_pretrain_bench() -> ModuleType:
    """bench/pretrain.py as a module: its presets and batches are the ones this script measures."""
    spec = importlib.util.spec_from_file_location("bench_pretrain", PRETRAIN_BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def preset_config(preset: str) -> Any:
    """The GPTConfig of one of bench/pretrain.py's presets."""
    from model.config import GPTConfig

    return GPTConfig(**load_pretrain_bench().PRESETS[preset])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the GPU's queue is part of the time


def seconds_per_call(fn: Callable[[], Any], device: torch.device, iters: int, warmup: int = 3) -> float:
    """Mean wall time of one call, after `warmup` calls (kernel selection, allocator)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / iters


def peak_flops(device: torch.device) -> float | None:
    from steps.training.throughput import default_peak_flops

    return default_peak_flops(device)


def rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


# --- the checks (each runs in a child process: `--child NAME`) ------------------------------------


def check_plan(ctx: Context) -> Result:
    """The imports, the 124M config on the meta device (no memory), its FLOPs per token at the
    context length, and the tokens/s that the MFU goal asks of an H100."""
    from model.gpt import GPTModel, count_parameters
    from steps.training.hardware import compile_unsupported
    from steps.training.throughput import PEAK_FLOPS, flops_per_token

    cfg = preset_config("124m")
    with torch.device("meta"):
        model = GPTModel(cfg)
    flops = flops_per_token(cfg, cfg.context_length)
    return {
        "torch": torch.__version__,
        "params_124m": count_parameters(model),
        "flops_per_token_124m": flops,
        "goal_tokens_per_s_h100": round(MFU_GOAL * PEAK_FLOPS[GOAL_GPU] / flops),
        "compile_on_cuda": compile_unsupported(torch.device("cuda")) or "ok",
    }


def check_matmul_bf16(ctx: Context) -> Result:
    """Square bf16 matmuls: the tensor cores' rate, against the GPU's listed peak."""
    n = ctx.sizes.matmul_n
    a, b = (torch.randn(n, n, device=ctx.device, dtype=torch.bfloat16) for _ in range(2))
    multiply = functools.partial(torch.mm, a, b, out=torch.empty_like(a))
    seconds = seconds_per_call(multiply, ctx.device, ctx.sizes.iters * 2)
    tflops = 2 * n**3 / seconds / 1e12
    peak = peak_flops(ctx.device)
    return {"n": n, "tflops": round(tflops, 1), "peak_share": rounded(tflops * 1e12 / peak if peak else None)}


def check_matmul_tf32(ctx: Context) -> Result:
    """fp32 matmuls with TF32 off ("highest") and on ("high", as train() sets it): speed and the
    relative error TF32 adds."""
    n = ctx.sizes.matmul_n
    a, b = (torch.randn(n, n, device=ctx.device) for _ in range(2))
    rate, product = {}, {}
    for label, precision in (("off", "highest"), ("on", "high")):
        torch.set_float32_matmul_precision(precision)
        product[label] = torch.empty_like(a)
        multiply = functools.partial(torch.mm, a, b, out=product[label])
        rate[label] = 2 * n**3 / seconds_per_call(multiply, ctx.device, ctx.sizes.iters) / 1e12
    error = ((product["on"] - product["off"]).norm() / product["off"].norm()).item()
    return {"n": n, "tflops_off": round(rate["off"], 1), "tflops_on": round(rate["on"], 1),
            "speedup": round(rate["on"] / rate["off"], 2), "relative_error": float(f"{error:.3g}")}


def check_adamw(ctx: Context) -> Result:
    """Fused AdamW against foreach on the GPT's own parameter shapes: both from the same weights
    and gradients, the same number of steps; the weights must agree and the step times are compared."""
    from model.gpt import GPTModel

    bench = load_pretrain_bench()
    torch.manual_seed(0)
    start = [p.detach() for p in GPTModel(preset_config(ctx.sizes.preset)).to(ctx.device).parameters()]
    grads = [torch.randn_like(p) * 1e-3 for p in start]
    params, optimizers = {}, {}
    for kind in ("fused", "foreach"):
        params[kind] = [p.clone().requires_grad_() for p in start]
        for p, g in zip(params[kind], grads):
            p.grad = g
        optimizers[kind] = torch.optim.AdamW(params[kind], lr=bench.LR, betas=bench.BETAS,
                                             weight_decay=bench.WEIGHT_DECAY, **{kind: True})
    seconds = {kind: seconds_per_call(opt.step, ctx.device, ctx.sizes.iters) for kind, opt in optimizers.items()}
    diff = max((f - e).abs().max().item() for f, e in zip(params["fused"], params["foreach"]))
    if diff > 1e-5:
        raise RuntimeError(f"fused AdamW's weights differ from foreach's by {diff:.3g} after "
                           f"{ctx.sizes.iters + 3} steps (tolerance 1e-5)")
    return {"params": sum(p.numel() for p in start), "step_ms_fused": round(seconds["fused"] * 1e3, 3),
            "step_ms_foreach": round(seconds["foreach"] * 1e3, 3),
            "speedup": round(seconds["foreach"] / seconds["fused"], 2), "max_abs_diff": float(f"{diff:.3g}")}


def check_sdpa(ctx: Context) -> Result:
    """bf16 causal attention, forward + backward, through SDPA with the flash backend alone and with
    the math backend alone; then our GPTModel's training forward + backward with flash alone (it
    fails there if the model's attention call cannot take the flash kernel)."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from model.gpt import GPTModel

    q, k, v = (torch.randn(*ctx.sizes.attention, device=ctx.device, dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    grad_out = torch.randn_like(q)

    def attention(backend: SDPBackend) -> Callable[[], torch.Tensor]:
        def step() -> torch.Tensor:
            with sdpa_kernel([backend]):
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
                y.backward(grad_out)
            return y
        return step

    flash, math = attention(SDPBackend.FLASH_ATTENTION), attention(SDPBackend.MATH)
    diff = (flash().detach().float() - math().detach().float()).abs().max().item()
    ms = {name: seconds_per_call(fn, ctx.device, ctx.sizes.iters) * 1e3 for name, fn in (("flash", flash), ("math", math))}

    cfg = preset_config(ctx.sizes.preset)
    model = GPTModel(cfg).to(ctx.device).train()  # dropout on, as in training
    tokens = torch.randint(0, cfg.vocab_size, (2, ctx.sizes.seq_len), device=ctx.device)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), torch.autocast(ctx.device.type, dtype=ctx.amp):
        model(tokens).float().mean().backward()
    return {"shape_bhtd": list(ctx.sizes.attention), "ms_flash": round(ms["flash"], 3), "ms_math": round(ms["math"], 3),
            "speedup": round(ms["math"] / ms["flash"], 2), "max_abs_diff": float(f"{diff:.3g}"),
            "model_runs_on_flash": True}


def train_steps(ctx: Context, compile: bool, dist: Any = None) -> Result:
    """`1 + steps` optimizer steps of train() on the preset's GPT (one logged row per step); the
    first step (warm-up, or compiling) is timed apart from the median of the others."""
    from model.gpt import GPTModel
    from steps.tasks.language_modeling import lm_loss
    from steps.training.distributed import SINGLE_PROCESS
    from steps.training.throughput import flops_per_token
    from steps.training.train import TrainSettings, train

    me = dist or SINGLE_PROCESS
    bench = load_pretrain_bench()
    cfg = preset_config(ctx.sizes.preset)
    global_batch = ctx.sizes.batch_size * me.world_size
    rows = me.shard(global_batch)  # this rank's rows of every global batch
    batches = [(x[rows], y[rows]) for x, y in bench.make_batches(cfg, global_batch, ctx.sizes.seq_len, 4)]
    torch.manual_seed(0)
    model = GPTModel(cfg)
    settings = TrainSettings(max_steps=1 + ctx.sizes.steps, lr=bench.LR, warmup_steps=1, weight_decay=bench.WEIGHT_DECAY,
                             grad_clip=bench.CLIP, eval_interval=10**9, log_interval=1, compile=compile)
    result = train(model, itertools.cycle(batches), lm_loss, settings, ctx.device, ctx.amp, desc="gpu_check", dist=me)
    rates = [row["tokens_per_s"] for row in result.history if row.get("step", 0) >= 1]  # global tokens/s per step
    tokens_per_step = global_batch * ctx.sizes.seq_len
    steady = statistics.median(rates[1:])
    peak = peak_flops(ctx.device)
    flops = flops_per_token(cfg, ctx.sizes.seq_len)
    return {"first_step_s": round(tokens_per_step / rates[0], 3), "step_ms": round(tokens_per_step / steady * 1e3, 2),
            "tokens_per_s": round(steady, 1),
            "mfu": rounded(steady * flops / (peak * me.world_size) if peak else None),
            "peak_memory_mb": round(result.peak_memory_mb)}


def check_compile(ctx: Context) -> Result:
    """train() with pretrain.compile off, then on, on the same model and batches: the compile
    time (the compiled run's first step less the eager run's steady step) and the steady step time."""
    runs = {}
    for label, compile in (("eager", False), ("compiled", True)):
        runs[label] = train_steps(ctx, compile)
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()  # the eager run's blocks, before the compiled run allocates its own
    eager, done = runs["eager"], runs["compiled"]
    return {"compile_s": round(done["first_step_s"] - eager["step_ms"] / 1e3, 2),
            "step_ms_eager": eager["step_ms"], "step_ms_compiled": done["step_ms"],
            "speedup": round(eager["step_ms"] / done["step_ms"], 2),
            "tokens_per_s_eager": eager["tokens_per_s"], "tokens_per_s_compiled": done["tokens_per_s"],
            "mfu_eager": eager["mfu"], "mfu_compiled": done["mfu"]}


def fsdp_rank(ctx: Context) -> None:
    """One rank of the FSDP check (torchrun starts one per GPU): a few steps of train() with the
    model sharded by FSDP2, as `pretrain.distributed: fsdp` runs; rank 0 prints the result."""
    from steps.training.distributed import process_group

    with process_group(ctx.device, "fsdp") as (me, device):
        result = train_steps(Context(device, ctx.sizes, ctx.smoke), compile=False, dist=me)
        if me.is_main:
            print(json.dumps({"world_size": me.world_size, "per_gpu_batch": ctx.sizes.batch_size, **result}))


@dataclass(frozen=True)
class Check:
    name: str
    what: str
    cap_s: float
    """Its own time limit, seconds (the overall budget may leave it less)."""
    run: Callable[[Context], Result] | None = None
    """The check's body, run in a child process; None for those with their own command."""
    gpu: bool = True
    """Needs CUDA: skipped in a dry run."""


CHECKS = [
    Check("plan", "imports; the 124M config (meta device), its FLOPs/token, the goal in tokens/s", 60,
          check_plan, gpu=False),
    Check("matmul_bf16", "bf16 matmul TFLOP/s", 45, check_matmul_bf16),
    Check("matmul_tf32", "fp32 matmul TFLOP/s, TF32 off and on", 45, check_matmul_tf32),
    Check("adamw", "fused AdamW: matches foreach, step time", 60, check_adamw),
    Check("sdpa", "flash attention (SDPA, bf16, causal) against math; our model on flash alone", 60, check_sdpa),
    Check("pretrain", "124M step through train(): tokens/s, MFU (bench/pretrain.py --preset 124m)", 120),
    Check("compile", "torch.compile of our GPT through train(): compile time, step time", 150, check_compile),
    Check("fsdp", "FSDP through train() under torchrun, one process per GPU", 120),
]
BY_NAME = {check.name: check for check in CHECKS}


# --- the parent: which checks run, as what command, with what limit ---------------------------------


def child_args(args: argparse.Namespace) -> list[str]:
    """The flags a child needs to rebuild the parent's sizes."""
    return (["--smoke"] if args.smoke else []) + ["--batch-size", str(sizes_of(args).batch_size)]


def sizes_of(args: argparse.Namespace) -> Sizes:
    base = SMOKE_SIZES if args.smoke else GPU_SIZES
    return base if args.batch_size is None else Sizes(**{**base.__dict__, "batch_size": args.batch_size})


def command_for(check: Check, args: argparse.Namespace, gpus: int) -> list[str]:
    me = [sys.executable, str(Path(__file__).resolve())]
    if check.name == "pretrain":
        s = sizes_of(args)
        return [sys.executable, str(PRETRAIN_BENCH), "--preset", s.preset, "--batch-size", str(s.batch_size),
                "--seq-len", str(s.seq_len), "--steps", str(s.steps), "--repeats", "2" if not args.smoke else "1",
                "--device", "cpu" if args.smoke else "cuda"]
    if check.name == "fsdp":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                *me[1:], "--fsdp-rank", *child_args(args)]
    return [*me, "--child", check.name, *child_args(args)]


def pretrain_result(summary: Result) -> Result:
    """bench/pretrain.py's JSON line, as this check reports it."""
    return {"tokens_per_s": summary["tokens_per_s_ours"], "mfu": summary.get("mfu_ours"),
            "mfu_bare": summary.get("mfu_bare"), "ratio_ours_to_bare": summary["ratio"],
            "precision": summary["precision"]}


def error_line(stderr: str) -> str:
    """The exception a child died of: the last 'SomethingError: message' line of its stderr (torchrun's
    own ChildFailedError summary left out), else its last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    pattern = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b.*:")
    errors = [line for line in lines if pattern.match(line) and "ChildFailedError" not in line]
    return (errors or lines or ["no error message"])[-1][:600]


def run_check(check: Check, command: list[str], limit_s: float) -> Result:
    """Run one check's command with a time limit; its result is the last JSON line of its stdout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)  # torchrun's, should this script itself run under one
    start = time.perf_counter()
    # A session of its own: on a timeout the whole group goes (torchrun's ranks, compile workers).
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"status": "failed", "seconds": round(time.perf_counter() - start, 1),
                "error": f"timed out after {limit_s:.3g} s (its cap; raise it with --cap {check.name}=SECONDS)"}
    seconds = round(time.perf_counter() - start, 1)
    if proc.returncode != 0:
        return {"status": "failed", "seconds": seconds, "error": error_line(stderr), "exit_code": proc.returncode}
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"status": "failed", "seconds": seconds, "error": "the check printed no JSON line"}
    figures = json.loads(lines[-1])
    if check.name == "pretrain":
        figures = pretrain_result(figures)
    return {"status": "ok", "seconds": seconds, **figures}


def skip_reason(check: Check, cuda: bool, gpus: int, args: argparse.Namespace) -> str | None:
    """Why `check` does not run here, or None."""
    smoke = args.smoke
    if not check.gpu:
        return None
    if not cuda and not smoke:
        return "no CUDA device (torch.cuda.is_available() is False): dry run"
    if check.name == "fsdp" and not smoke and gpus < 2:
        return f"needs more than one GPU, {gpus} visible"
    if check.name == "compile" and smoke and args.checks is None:
        # Named in --checks, it runs: that is how its code is tested without a GPU.
        return "--smoke: inductor's C++ build on a CPU takes minutes; name it in --checks to run it"
    return None


def goal_summary(results: dict[str, Result]) -> Result:
    """The best 124M MFU measured through our training code (eager or compiled) against the goal.
    The goal is stated for an H100; elsewhere the same share of that GPU's own peak is judged."""
    figures = [results.get("pretrain", {}).get("mfu"), results.get("compile", {}).get("mfu_compiled")]
    best = max((f for f in figures if f is not None), default=None)
    return {"mfu_goal": MFU_GOAL, "mfu_goal_gpu": GOAL_GPU, "mfu_124m": best,
            "mfu_goal_met": None if best is None else best >= MFU_GOAL}


def headline(result: Result) -> str:
    if result["status"] == "skipped":
        return result["reason"]
    if result["status"] == "failed":
        return result["error"]
    return ", ".join(f"{key} {value}" for key, value in result.items() if key not in ("status", "seconds"))


def print_table(results: dict[str, Result]) -> None:
    print(f"{'check':<13}{'status':<9}{'s':>7}  figures / reason")
    for name, result in results.items():
        seconds = f"{result['seconds']:.1f}" if "seconds" in result else ""
        print(f"{name:<13}{result['status']:<9}{seconds:>7}  {headline(result)}")


def parse_caps(items: list[str]) -> dict[str, float]:
    caps = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in BY_NAME:
            raise SystemExit(f"--cap {item!r}: write NAME=SECONDS with NAME one of {', '.join(BY_NAME)}")
        try:
            caps[name] = float(value)
        except ValueError:
            raise SystemExit(f"--cap {item!r}: SECONDS must be a number") from None
    return caps


def chosen(args: argparse.Namespace) -> list[str]:
    """The checks to run: every one, in CHECKS' order, or those --checks names, in its order."""
    return list(BY_NAME) if args.checks is None else args.checks.split(",")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checks", default=None, help=f"comma-separated, of: {', '.join(BY_NAME)}; default: all")
    parser.add_argument("--cap", action="append", default=[], metavar="NAME=SECONDS", help="one check's time cap")
    parser.add_argument("--total-s", type=float, default=TOTAL_S, help="budget for all checks together")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"sequences per step (per GPU for fsdp); default {GPU_SIZES.batch_size}")
    parser.add_argument("--smoke", action="store_true", help="run the GPU checks' code on the CPU at toy sizes")
    parser.add_argument("--child", choices=sorted(BY_NAME), help=argparse.SUPPRESS)  # one check, in this process
    parser.add_argument("--fsdp-rank", action="store_true", help=argparse.SUPPRESS)  # a torchrun rank
    args = parser.parse_args(argv)
    unknown = set(chosen(args)) - set(BY_NAME)
    if unknown:
        parser.error(f"unknown check(s) {', '.join(sorted(unknown))}: choose from {', '.join(BY_NAME)}")
    return args


def child(args: argparse.Namespace) -> None:
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    ctx = Context(device, sizes_of(args), args.smoke)
    if args.fsdp_rank:
        fsdp_rank(ctx)
        return
    run = BY_NAME[args.child].run
    assert run is not None
    print(json.dumps(run(ctx)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child or args.fsdp_rank:
        child(args)
        return 0
    caps = parse_caps(args.cap)
    cuda = torch.cuda.is_available()
    gpus = torch.cuda.device_count() if cuda else 0
    device_name = torch.cuda.get_device_name(0) if cuda else "cpu"
    print(f"GPU checks: {device_name}" + (f" x {gpus}" if gpus > 1 else "") + f", torch {torch.__version__}"
          + (", --smoke (GPU checks' code on the CPU at toy sizes; figures mean nothing)" if args.smoke else "")
          + ("" if cuda or args.smoke else ": no CUDA, a dry run"), flush=True)
    deadline = time.perf_counter() + args.total_s
    results: dict[str, Result] = {}
    for name in chosen(args):
        check = BY_NAME[name]
        reason = skip_reason(check, cuda, gpus, args)
        left = deadline - time.perf_counter()
        if reason is None and left < 1:
            reason = f"no time left of the {args.total_s:.0f} s budget (--total-s)"
        if reason is not None:
            results[name] = {"status": "skipped", "reason": reason}
            print(f"skip {name}: {reason}", flush=True)
            continue
        print(f"run  {name}: {check.what}", flush=True)
        results[name] = run_check(check, command_for(check, args, gpus if not args.smoke else 2),
                                  min(caps.get(name, check.cap_s), left))
    print_table(results)
    summary = {"cuda": cuda, "device": device_name, "gpus": gpus, "torch": torch.__version__, "smoke": args.smoke,
               "budget_s": args.total_s, "total_s": round(args.total_s - (deadline - time.perf_counter()), 1),
               **goal_summary(results), "checks": results,
               "skipped": {n: r["reason"] for n, r in results.items() if r["status"] == "skipped"},
               "failed": {n: r["error"] for n, r in results.items() if r["status"] == "failed"}}
    print(json.dumps(summary))
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
