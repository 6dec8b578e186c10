"""The measurements of `python -m bench.report`; each runs inside a worker process (bench.report.worker).

Every function takes (ctx, args) and hands its results to `ctx.emit(record)` as soon as each is
measured (the parent writes them to results.jsonl at once). `Unavailable` means "cannot run here"
(not a failure); any other exception fails the task and ends the worker.

Sizes: the paper's on a GPU (`bench._engines.paper_case`, bf16, global batch 768 split into the
micro-batches the trainer picks from free memory); with `tiny` the smallest that still run every code
path (fp32, width 64, batch 2, Triton in its interpreter on CPU), which is what CI checks.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import platform
import statistics
import time
from typing import Callable, Optional

import torch

from bench.timing import device_seconds, seconds_each_call
from trm_fast.errors import first_line

TASKS: dict[str, Callable] = {}
GIB = 1024**3


class Unavailable(Exception):
    """The task cannot run on this machine (recorded as unavailable, not as a failure)."""


def task(fn):
    TASKS[fn.__name__] = fn
    return fn


class Context:
    def __init__(self, emit: Callable[[dict], None], tiny: bool):
        self.emit = emit
        self.tiny = tiny
        self.on_gpu = torch.cuda.is_available()
        self.device = torch.device("cuda" if self.on_gpu else "cpu")

    @functools.cached_property
    def profile(self):
        from bench.profiles import make_profile

        return make_profile("gpu" if self.on_gpu and not self.tiny else "tiny")

    @functools.cached_property
    def op_cases(self) -> dict:
        from bench.bench_ops import op_cases

        torch.manual_seed(0)
        return op_cases(self.profile)

    @property
    def device_name(self) -> str:
        return torch.cuda.get_device_name(self.device) if self.on_gpu else "cpu"


# ----------------------------------------------------------------------------- sizes
# The report's tiny cases: bench's tiny cases (width 64, 2 heads, T=2, n=1, fp32) cut further so one
# step of the Triton engine takes seconds in the interpreter.
TINY_REPORT_OVERRIDES = ["global_batch_size=2", "model.halt_max_steps=2", "model.num_layers=1"]
TINY_SEQ_LEN = {"sudoku": 9, "maze": 16}
CORRECTNESS_BATCH = 32  # paper shapes (sequence, width, heads, recursion) at a batch that fits fp32 too


def bench_case(name: str, tiny: bool, extra: tuple = ()):
    """The benchmark case `name` (bench._engines) at paper size, or tiny, plus config overrides."""
    from bench import _engines as engines

    if not tiny:
        return engines._case(name, list(extra), engines._CASES[name][2])
    data = engines._CASES[name][2]
    seq_len = TINY_SEQ_LEN["maze" if name.startswith("maze") else "sudoku"]
    overrides = engines._TINY_OVERRIDES + TINY_REPORT_OVERRIDES + list(extra)
    return engines._case(name, overrides, engines.DataShape(data.vocab_size, seq_len))


# Engine names of the report: bench._engines.ENGINE_SPECS plus the fused-linear variant of fast_triton.
def engine_spec(name: str):
    from bench._engines import ENGINE_SPECS

    if name == "fast_triton_fused_linear":
        return ENGINE_SPECS["fast_triton"], ("fused_linear=true",)
    return ENGINE_SPECS[name], ()


# ----------------------------------------------------------------------------- memory
def reset_peaks(device: torch.device) -> None:
    from bench._engines import reset_peak_memory  # imported late: the worker sets the environment first

    reset_peak_memory(device)


def release(device: torch.device) -> None:
    from bench._engines import release_memory

    release_memory(device)


def memory_peaks(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"max_memory_allocated": None, "max_memory_reserved": None}
    return {"max_memory_allocated": torch.cuda.max_memory_allocated(device),
            "max_memory_reserved": torch.cuda.max_memory_reserved(device)}


def _interpreted(ctx: Context, backend: str) -> bool:
    return backend != "torch" and not ctx.on_gpu


# ----------------------------------------------------------------------------- 1. environment
def _version(module_name: str) -> Optional[str]:
    try:
        module = __import__(module_name)
        return getattr(module, "__version__", "?")
    except Exception:
        return None


@task
def environment(ctx: Context, args: dict) -> None:
    """Device, versions, op backends, the trainer's micro-batches; then the matmul and copy ceilings."""
    from trm_fast.ops import resolve_backend_name
    from trm_fast.ops._backend import triton_interpreter_on

    device = ctx.device
    info = {
        "kind": "environment",
        "device": ctx.device_name if ctx.on_gpu else f"cpu ({platform.processor() or platform.machine()})",
        "device_count": torch.cuda.device_count() if ctx.on_gpu else 0,
        "torch": torch.__version__, "cuda": torch.version.cuda, "triton": _version("triton"),
        "numpy": _version("numpy"), "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "triton_interpreter": triton_interpreter_on(), "tiny": ctx.tiny,
        "flash_attn": bool(_version("flash_attn")) or bool(_version("flash_attn_interface")),
        "cuda_extension_enabled": os.environ.get("TRM_FAST_CUDA_EXT", "1") != "0",
    }
    if ctx.on_gpu:
        props = torch.cuda.get_device_properties(device)
        info.update(capability=f"{props.major}.{props.minor}", sm_count=props.multi_processor_count,
                    memory_gib=round(props.total_memory / GIB, 1), cudnn=torch.backends.cudnn.version(),
                    driver_free_gib=round(torch.cuda.mem_get_info(device)[0] / GIB, 1))
    info["op_backends"] = {}
    for requested in ("auto", "torch", "triton", "cuda"):
        try:
            info["op_backends"][requested] = resolve_backend_name(device, None if requested == "auto" else requested)
        except Exception as error:  # a backend that cannot run here says why
            info["op_backends"][requested] = f"unavailable: {first_line(error)}"
    micro = {}
    for name in ("maze_att", "sudoku_mlp", "sudoku_att"):
        case = bench_case(name, ctx.tiny)
        try:
            micro[name] = {"global_batch": case.batch_size, "micro_batch": case.micro_batch_size(device)}
        except Exception as error:
            micro[name] = {"global_batch": case.batch_size, "error": first_line(error)}
    info["trainer_micro_batch"] = micro
    ctx.emit(info)

    # Ceilings measured in this run: a large bf16 matmul and a device-to-device copy.
    big = ctx.on_gpu and not ctx.tiny
    size = 8192 if big else 256
    dtype = torch.bfloat16 if ctx.on_gpu else torch.float32
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    out = torch.empty(size, size, device=device, dtype=dtype)
    seconds = statistics.median(device_seconds(lambda: torch.mm(a, b, out=out), device, warmup=3, rounds=5,
                                               inner=10 if ctx.on_gpu else 1))
    flops = 2 * size**3
    ctx.emit({"kind": "ceiling", "name": "matmul", "dtype": str(dtype).replace("torch.", ""), "shape": [size] * 3,
              "seconds": seconds, "flops": flops, "flop_per_s": flops / seconds})
    del a, b, out
    nbytes = 2 * GIB if big else 8 * 1024**2  # 2 GiB on a GPU: well past the 60 MB L2
    src = torch.empty(nbytes // 2, device=device, dtype=torch.bfloat16).normal_()
    dst = torch.empty_like(src)
    seconds = statistics.median(device_seconds(lambda: dst.copy_(src), device, warmup=3, rounds=5,
                                               inner=5 if ctx.on_gpu else 1))
    moved = 2 * src.numel() * src.element_size()  # read + write
    ctx.emit({"kind": "ceiling", "name": "copy", "bytes": moved, "seconds": seconds, "bytes_per_s": moved / seconds})


# ----------------------------------------------------------------------------- 2. correctness
def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (the recursion's rounding grows with the tensor's
    scale, not each element's): 0 is exact; 'inf' when shapes differ or values are not finite."""
    if actual.shape != expected.shape:
        return math.inf
    actual, expected = actual.detach().double(), expected.detach().double()
    if not bool(torch.isfinite(actual).all()):
        return math.inf
    error = (actual - expected).abs().max().item() if actual.numel() else 0.0
    scale = expected.abs().max().item() if expected.numel() else 0.0
    return error / scale if scale > 0 else error


def _one_supervision_step(model, batch: dict, loss_type: str, backend: str) -> tuple[dict, dict, torch.Tensor]:
    """One training supervision step from a fresh carry, as TrainStep runs it: outputs, carry, loss,
    and every gradient (parameters and the batch's puzzle-embedding rows)."""
    from trm_fast.train.losses import act_loss

    model.train()
    model.zero_grad(set_to_none=True)
    carry = model.initial_carry(batch)
    new_carry, outputs = model(carry, batch)
    loss, _ = act_loss(outputs, new_carry.current_data["labels"], new_carry.halted, new_carry.steps, loss_type, backend)
    (loss / batch["inputs"].shape[0]).backward()
    values = {
        "logits": outputs["logits"].detach().float(),
        "q_halt": outputs["q_halt_logits"].detach().float(),
        "q_continue": outputs["q_continue_logits"].detach().float(),
        "y_answer": new_carry.y_answer.detach().float(),
        "z_latent": new_carry.z_latent.detach().float(),
        "loss": loss.detach().float(),
    }
    grads = {name: p.grad.detach().float().clone() for name, p in model.named_parameters() if p.grad is not None}
    if carry.puzzle_rows is not None and carry.puzzle_rows.values.grad is not None:
        grads["puzzle_rows"] = carry.puzzle_rows.values.grad.detach().float().clone()
    return values, grads, new_carry.halted.clone()


def _errors(got: tuple, expected: tuple) -> dict:
    (values, grads, halted), (ref_values, ref_grads, ref_halted) = got, expected
    result = {name: relative_error(values[name], ref_values[name]) for name in ref_values}
    grad_errors = {name: relative_error(grads[name], grad) if name in grads else math.inf for name, grad in ref_grads.items()}
    grad_errors.update({name: math.inf for name in grads if name not in ref_grads})  # a gradient the reference lacks
    worst = max(grad_errors, key=grad_errors.get) if grad_errors else None
    return {"errors": result, "grad_errors": grad_errors, "max_grad_error": grad_errors[worst] if worst else 0.0,
            "worst_grad": worst, "halted_agree": bool(torch.equal(halted, ref_halted))}


# Tolerances on the relative error: fp32 only reorders sums; bf16 keeps 8 mantissa bits and ~30
# chained post-norm layers (tests/model/test_fast_gpu.py uses the same bounds).
TOLERANCE = {"float32": (1e-3, 1e-3), "bfloat16": (0.05, 0.1), "float16": (0.05, 0.1)}  # (values, gradients)


def compare_engines(config, backend: str, device, batch_size: int, *, loss_type: str = "stablemax",
                    fused_linear: bool = False, seed: int = 0, noise_floor: bool = True) -> dict:
    """One supervision step of the fast engine on `backend` vs the reference TRM, same weights and batch.

    Relative errors (`relative_error`) of logits, q_halt / q_continue, the carry (y_answer, z_latent),
    the loss and every parameter gradient (plus the puzzle-embedding rows'). In bf16 the reference is
    also run in fp32 from the same weights: `noise_floor` holds the bf16 reference's own errors
    against it (what bf16 alone costs), `errors_vs_fp32` the fast engine's. Runs anywhere: the torch
    backend on CPU, Triton under its interpreter (tiny sizes), every backend on a GPU.
    """
    from bench._engines import make_batch
    from trm_fast.model import FastTRM, TRM

    config = dataclasses.replace(config, halt_exploration_prob=0.0)  # no random halting: same carries
    torch.manual_seed(seed)
    reference = TRM(config)
    with torch.no_grad():  # non-trivial puzzle rows and Q head so every path carries signal (q stays < 0:
        reference.inner.puzzle_emb.weights.normal_() if reference.inner.puzzle_emb is not None else None
        reference.inner.q_head.weight.normal_(std=0.01)  # no slot halts, both engines agree)
    state = reference.state_dict()
    batch = make_batch(config, batch_size, device, seed)
    expected = _one_supervision_step(reference.to(device), batch, loss_type, "torch")
    del reference
    fast = FastTRM(config, backend=backend, fused_linear=fused_linear)
    fast.load_state_dict(state)
    got = _one_supervision_step(fast.to(device), batch, loss_type, backend)
    del fast
    result = {"dtype": config.forward_dtype, "batch_size": batch_size, "seq_len": config.total_len,
              "hidden_size": config.hidden_size, **_errors(got, expected)}
    tol_values, tol_grads = TOLERANCE[config.forward_dtype]
    result["tolerance"] = {"values": tol_values, "gradients": tol_grads}
    result["within_tolerance"] = bool(
        max(result["errors"].values()) <= tol_values and result["max_grad_error"] <= tol_grads and result["halted_agree"]
    )
    if noise_floor and config.forward_dtype != "float32":
        truth_model = TRM(dataclasses.replace(config, forward_dtype="float32"))
        truth_model.load_state_dict(state)
        truth = _one_supervision_step(truth_model.to(device), batch, loss_type, "torch")
        del truth_model
        floor, versus = _errors(expected, truth), _errors(got, truth)
        result["noise_floor"] = {"errors": floor["errors"], "max_grad_error": floor["max_grad_error"]}
        result["errors_vs_fp32"] = {"errors": versus["errors"], "max_grad_error": versus["max_grad_error"]}
    return result


@task
def correctness(ctx: Context, args: dict) -> None:
    from trm_fast.ops._backend import triton_runs_on

    label = args["backend"]
    backend = "triton" if label.startswith("triton") else label
    if backend == "triton" and not triton_runs_on(ctx.device):
        raise Unavailable("Triton cannot run here")
    if backend == "cuda":
        from trm_fast.ops._backend import cuda_extension_available

        if not ctx.on_gpu or not cuda_extension_available():
            raise Unavailable("the CUDA extension is not available")
    case = bench_case(args["case"], ctx.tiny)
    batch_size = case.batch_size if ctx.tiny else CORRECTNESS_BATCH
    result = compare_engines(case.config, backend, ctx.device, batch_size, loss_type=case.train_config.loss_type,
                             fused_linear=label == "triton_fused_linear")
    ctx.emit({"kind": "correctness", "case": args["case"], "backend": label, **result})


def _flat_tensors(result) -> list:
    if isinstance(result, dict):
        return list(result.values())
    if isinstance(result, (tuple, list)):
        return list(result)
    return [result]


def _named_tensors(result) -> dict:
    """An op's tensor outputs by name (dict keys, or positions), so fused and plain pair up by name."""
    if isinstance(result, dict):
        items = result.items()
    elif isinstance(result, (tuple, list)):
        items = ((str(index), value) for index, value in enumerate(result))
    else:
        items = (("0", result),)
    return {str(name): value for name, value in items if isinstance(value, torch.Tensor)}


def _clone_inputs(inputs: tuple, dtype: Optional[torch.dtype] = None) -> tuple:
    cloned = []
    for value in inputs:
        if isinstance(value, torch.Tensor):
            copy = value.detach().clone()
            if dtype is not None and copy.is_floating_point():
                copy = copy.to(dtype)
            cloned.append(copy.requires_grad_(value.requires_grad))
        elif isinstance(value, list):
            cloned.append([t.detach().clone() if isinstance(t, torch.Tensor) else t for t in value])
        else:
            cloned.append(value)
    return tuple(cloned)


def _mutated(inputs: tuple) -> list:
    flat = []
    for value in inputs:
        if isinstance(value, list):
            flat += [t for t in value if isinstance(t, torch.Tensor)]
        elif isinstance(value, torch.Tensor):
            flat.append(value)
    return flat


OP_TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2, "float16": 3e-2}
OP_CORRECTNESS_MAX_BATCH = 16  # attention: [16, H, S, hd] keeps the fp32 reference's S x S scores small


def compare_op(case, backend: str, device, seed: int = 1) -> dict:
    """A fused op (`case.fused`, bench.bench_ops.OpCase) vs its plain version at the case's shapes and
    dtype, forward and backward: relative errors of every output and input gradient against the plain
    op run in fp32 (`errors`), and the plain op in the case's dtype against the same (`noise_floor`).
    In-place ops (the optimizer) compare the tensors they update."""
    torch.manual_seed(seed)
    inputs = case.inputs()
    if case.name == "attention":
        inputs = tuple(t[:OP_CORRECTNESS_MAX_BATCH].detach().requires_grad_(t.requires_grad) for t in inputs)
    runs = {}
    for name, fn, dtype in (("fused", lambda *a: case.fused(*a, backend=backend), None), ("plain", case.plain, None),
                            ("fp32", case.plain, torch.float32)):
        run_inputs = _clone_inputs(inputs, dtype)
        runs[name] = (run_inputs, _named_tensors(fn(*run_inputs)))
    dtypes = {str(t.dtype).replace("torch.", "") for t in inputs if isinstance(t, torch.Tensor) and t.is_floating_point()}
    dtype = "bfloat16" if "bfloat16" in dtypes else ("float16" if "float16" in dtypes else "float32")
    errors, floor, mismatches = {}, {}, 0

    def compare(label, fused_t, plain_t, truth_t):
        nonlocal mismatches
        if truth_t.is_floating_point():
            errors[label] = relative_error(fused_t.float(), truth_t.float())
            floor[label] = relative_error(plain_t.float(), truth_t.float())
        else:
            mismatches += int((fused_t.to(truth_t.dtype) != truth_t).sum().item())

    if case.differentiable:
        fused_out, plain_out, truth_out = (runs[k][1] for k in ("fused", "plain", "fp32"))
        for label, truth in truth_out.items():
            if label not in fused_out:
                errors[f"out {label}"] = math.inf
                continue
            compare(f"out {label}", fused_out[label], plain_out[label], truth)
        # The same upstream gradients for all three, rounded to the fused outputs' dtypes first.
        generator = torch.Generator().manual_seed(seed + 1)
        upstream = {label: torch.randn(t.shape, generator=generator).to(device=t.device, dtype=t.dtype)
                    for label, t in sorted(fused_out.items()) if t.requires_grad}
        for name in ("fused", "plain", "fp32"):
            pairs = [(t, upstream[label].to(t.dtype)) for label, t in runs[name][1].items()
                     if label in upstream and t.requires_grad]
            if pairs:
                torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
        leaves = [i for i, t in enumerate(inputs) if isinstance(t, torch.Tensor) and t.requires_grad]
        for i in leaves:
            f, p, t = (runs[k][0][i].grad for k in ("fused", "plain", "fp32"))
            if t is None:
                continue
            if f is None:
                errors[f"grad input{i}"] = math.inf
                continue
            compare(f"grad input{i}", f, p, t)
    else:
        for index, (f, p, t) in enumerate(zip(*(_mutated(runs[k][0]) for k in ("fused", "plain", "fp32")))):
            compare(f"updated input{index}", f, p, t)
    tolerance = OP_TOLERANCE[dtype]
    return {"dtype": dtype, "errors": errors, "noise_floor": floor, "integer_mismatches": mismatches,
            "max_error": max(errors.values(), default=0.0), "tolerance": tolerance,
            "within_tolerance": max(errors.values(), default=0.0) <= tolerance and mismatches == 0,
            "shapes": [list(t.shape) for t in inputs if isinstance(t, torch.Tensor)]}


def _fused_op_problem(ctx: Context, bench_case: str, backend: str) -> Optional[str]:
    from trm_fast.ops.registry import op_of_bench_case, unavailable_reason

    return unavailable_reason(op_of_bench_case(bench_case).name, backend, ctx.device)


@task
def op_correctness(ctx: Context, args: dict) -> None:
    problem = _fused_op_problem(ctx, args["op"], args["backend"])
    if problem:
        raise Unavailable(problem)
    result = compare_op(ctx.op_cases[args["op"]], args["backend"], ctx.device)
    ctx.emit({"kind": "op_correctness", "op": args["op"], "backend": args["backend"], **result})


# ----------------------------------------------------------------------------- 3, 4, 8. whole steps
def _step_rounds(ctx: Context, spec) -> tuple[int, int]:
    """(untimed calls incl. the first, timed calls). GPU: the first call loads the kernels (JIT-cached
    on disk by the correctness part) and picks cuBLAS/cuDNN algorithms; with CUDA graphs the second
    captures, compiled engines get a second call to settle; 3 timed. Tiny: 1 + 1 (1 + 0 interpreted)."""
    if not ctx.tiny and ctx.on_gpu:
        return (2 if spec.cuda_graphs or spec.compiled else 1), 3
    return 1, 0 if _interpreted(ctx, spec.backend) else 1


def _train_record(ctx, case, engine, name, spec, build_s, first_s, warmup_s, seconds) -> dict:
    from bench._engines import op_backends
    from trm_fast.flops import model_flop_utilisation, peak_flops

    median = statistics.median(seconds)
    dtype = case.config.forward_dtype
    peak = peak_flops(ctx.device_name, dtype) if ctx.on_gpu else None
    return {
        "engine": name, "batch_size": case.batch_size, "micro_batch_size": engine.train_step.micro_batch_size,
        "seq_len": case.config.seq_len, "dtype": dtype, "seconds": median, "rounds": len(seconds),
        "all_seconds": seconds, "build_s": build_s, "first_step_s": first_s, "warmup_s": warmup_s,
        "compile_s": max(0.0, first_s - median) if spec.compiled else None,
        "tokens": case.tokens_per_step, "tokens_per_s": case.tokens_per_step / median,
        "puzzles_per_s": case.batch_size / median, "flops": case.train_flops, "flop_per_s": case.train_flops / median,
        "peak_flops_spec": peak, "mfu_spec": model_flop_utilisation(case.train_flops, median, peak) if peak else None,
        "op_backends": op_backends(spec, ctx.device), "compile_backend": ctx.profile.compile_backend if spec.compiled else None,
        **memory_peaks(ctx.device),
    }


def _measure_train(ctx: Context, case, name: str, spec) -> dict:
    from bench._engines import TrainEngine, teardown

    warmup, rounds = _step_rounds(ctx, spec)
    reset_peaks(ctx.device)
    begin = time.perf_counter()
    engine = TrainEngine(spec, case, ctx.device, warmup_steps=1, compile_backend=ctx.profile.compile_backend)
    build_s = time.perf_counter() - begin
    try:
        calls, metrics = seconds_each_call(engine.step, ctx.device, warmup + rounds)
        if not bool(metrics.isfinite().all()):
            raise RuntimeError(f"{name}: non-finite metrics {metrics.tolist()} (the timing measured a broken step)")
        seconds = calls[warmup:] or calls[-1:]
        return _train_record(ctx, case, engine, name, spec, build_s, calls[0], calls[1:warmup], seconds)
    finally:
        teardown(engine, ctx.device)


@task
def train_step(ctx: Context, args: dict) -> None:
    """The trainer's whole step (TrainStep) for one engine: time, rates, MFU, peak memory. Out of
    memory at the trainer's micro-batch (the reference saves more than the fast engine the estimate
    is made for), it retries at half the micro-batch, up to twice, and says so."""
    from bench._engines import why_unavailable

    name = args["engine"]
    spec, extra = engine_spec(name)
    reason = why_unavailable(spec, ctx.device)
    if reason:
        raise Unavailable(reason)
    micro, retries = None, 0
    while True:
        case = bench_case(args["case"], ctx.tiny, extra + ((f"micro_batch_size={micro}",) if micro else ()))
        out_of_memory = False
        try:
            record = _measure_train(ctx, case, name, spec)
        except getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError):
            if retries >= 2:
                raise
            out_of_memory = True
        if not out_of_memory:
            break
        release(ctx.device)
        micro = max(1, (micro or case.micro_batch_size(ctx.device)) // 2)
        retries += 1
        print(f"[report] {name}: out of memory, retrying at micro-batch {micro}", flush=True)
    record["oom_retries"] = retries
    ctx.emit({"kind": "step", "case": args["case"], **record})


# Evaluating 768 30x30 mazes is 16 x 15 net calls at 768 x 916 tokens (~3 PFLOP, ~8 s on an H200): a
# quarter of that batch (still 176k tokens per net call) measures the same throughput in a quarter of the time.
EVAL_OVERRIDES = {"maze_att": ("global_batch_size=192",)}


@task
def eval_step(ctx: Context, args: dict) -> None:
    """The trainer's evaluation of one global batch: a fresh carry, all supervision steps, metrics."""
    from bench._engines import EvalEngine, op_backends, teardown, why_unavailable

    spec, _ = engine_spec(args["engine"])
    reason = why_unavailable(spec, ctx.device)
    if reason:
        raise Unavailable(reason)
    extra = () if ctx.tiny else EVAL_OVERRIDES.get(args["case"], ())
    case = bench_case(args["case"], ctx.tiny, extra)
    warmup, rounds = (1, 2) if ctx.on_gpu and not ctx.tiny else (1, 0 if _interpreted(ctx, spec.backend) else 1)
    reset_peaks(ctx.device)
    engine = EvalEngine(spec, case, ctx.device, compile_backend=ctx.profile.compile_backend)
    try:
        calls, metrics = seconds_each_call(engine.step, ctx.device, warmup + rounds)
        if not math.isfinite(metrics["lm_loss"]):
            raise RuntimeError(f"{args['engine']}: non-finite evaluation loss")
    finally:
        teardown(engine, ctx.device)
    seconds = calls[warmup:] or calls[-1:]
    median = statistics.median(seconds)
    steps = case.config.halt_max_steps
    ctx.emit({
        "kind": "eval", "case": args["case"], "engine": args["engine"], "batch_size": case.batch_size,
        "supervision_steps": steps, "seconds": median, "all_seconds": seconds, "first_s": calls[0],
        "tokens_per_s": steps * case.tokens_per_step / median, "puzzles_per_s": case.batch_size / median,
        "flops": case.eval_flops, "flop_per_s": case.eval_flops / median, "op_backends": op_backends(spec, ctx.device),
        **memory_peaks(ctx.device),
    })


# ----------------------------------------------------------------------------- 5. attention backends
ATTENTION_SHAPE = (192, 8, 916, 64)  # maze_att: one GPU's share of the reference's 4-GPU batch, 916 tokens
TINY_ATTENTION_SHAPE = (1, 2, 33, 64)


def _attention_fn(backend: str) -> Callable:
    import torch.nn.functional as F

    if backend == "triton":
        from trm_fast.ops import attention

        return lambda q, k, v: attention(q, k, v, backend="triton")
    if backend == "sdpa_default":
        return F.scaled_dot_product_attention
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernel = {"sdpa_flash": SDPBackend.FLASH_ATTENTION, "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
              "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION}[backend]

    def run(q, k, v):
        with sdpa_kernel(kernel):
            return F.scaled_dot_product_attention(q, k, v)

    return run


@task
def attention_backend(ctx: Context, args: dict) -> None:
    """Forward and forward+backward of one attention implementation at Maze's shape, with its error
    against the fp32 reference on the first batch rows."""
    from trm_fast.ops._backend import triton_runs_on
    from trm_fast.ops.attention import attention_reference

    backend = args["backend"]
    if backend.startswith("sdpa_") and backend != "sdpa_default" and not ctx.on_gpu:
        raise Unavailable("SDPA's fused kernels need a CUDA device")
    if backend == "triton" and not triton_runs_on(ctx.device):
        raise Unavailable("Triton cannot run here")
    big = ctx.on_gpu and not ctx.tiny
    shape = ATTENTION_SHAPE if big else TINY_ATTENTION_SHAPE
    dtype = torch.bfloat16 if ctx.on_gpu else torch.float32
    fn = _attention_fn(backend)
    torch.manual_seed(0)
    q, k, v = (torch.randn(shape, device=ctx.device, dtype=dtype, requires_grad=True) for _ in range(3))
    with torch.no_grad():
        rows = min(shape[0], 4)
        error = relative_error(fn(q[:rows], k[:rows], v[:rows]).float(),
                               attention_reference(q[:rows].float(), k[:rows].float(), v[:rows].float()))
    upstream = torch.randn(shape, device=ctx.device, dtype=dtype)

    def forward():
        with torch.no_grad():
            fn(q, k, v)

    def forward_backward():
        fn(q, k, v).backward(upstream)
        q.grad = k.grad = v.grad = None

    batch, heads, seq, head_dim = shape
    flops = 4 * batch * heads * seq * seq * head_dim  # QK^T and PV; backward counted as 2x (trm_fast.flops)
    interpreted = backend == "triton" and not ctx.on_gpu
    warmup, rounds, inner = (3, 5, 3) if big else (1, 1, 1)
    reset_peaks(ctx.device)
    for pass_name, call, pass_flops in (("fwd", forward, flops), ("fwdbwd", forward_backward, 3 * flops)):
        seconds = statistics.median(device_seconds(call, ctx.device, warmup, rounds, inner))
        ctx.emit({"kind": "attention", "backend": backend, "pass": pass_name, "shape": list(shape),
                  "dtype": str(dtype).replace("torch.", ""), "seconds": seconds, "flops": pass_flops,
                  "flop_per_s": pass_flops / seconds, "rel_error_vs_fp32": error, "interpreter": interpreted,
                  **memory_peaks(ctx.device)})


# ----------------------------------------------------------------------------- 6. per-op bandwidth
def _op_call(fn: Callable, inputs: tuple, with_backward: bool) -> Callable[[], None]:
    """fn on fixed inputs, no host sync (device_seconds times back-to-back calls)."""
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]

    def forward():
        with torch.no_grad():
            fn(*inputs)

    def forward_backward():
        outputs = [t for t in _flat_tensors(fn(*inputs)) if isinstance(t, torch.Tensor) and t.requires_grad]
        torch.autograd.backward(outputs, [torch.ones_like(t) for t in outputs])
        for leaf in leaves:
            leaf.grad = None

    return forward_backward if with_backward else forward


@task
def op_bandwidth(ctx: Context, args: dict) -> None:
    """One op's time at the paper shapes (forward, forward+backward): bytes/s for memory-bound ops
    (compared with the copy at summary time), FLOP/s for attention and the fused linear."""
    op, variant = args["op"], args["variant"]
    case = ctx.op_cases[op]
    if variant.startswith("fused_"):
        backend = variant.removeprefix("fused_")
        problem = _fused_op_problem(ctx, op, backend)
        if problem:
            raise Unavailable(problem)

        def fn(*inputs):
            return case.fused(*inputs, backend=backend)
    elif variant == "plain_compiled":
        fn = ctx.profile.compile(case.plain)
    else:
        fn = case.plain
    big = ctx.on_gpu and not ctx.tiny
    interpreted = variant == "fused_triton" and not ctx.on_gpu
    for pass_name in ("fwd", "fwdbwd"):
        if pass_name == "fwdbwd" and not case.differentiable:
            continue
        inputs = case.inputs()
        call = _op_call(fn, inputs, pass_name == "fwdbwd")
        (first_s,) = device_seconds(call, ctx.device)  # the first call: JIT compiles, autotuning
        # Back-to-back calls amortise launch gaps for the small ops; a slow one (the fp32 attention
        # reference materialises its S x S scores) is timed three times, once each.
        schedule = ((3, 5, 10) if first_s < 0.02 else (1, 3, 1)) if big else (0, 1, 1)
        seconds = statistics.median(device_seconds(call, ctx.device, *schedule))
        record = {"kind": "op_bandwidth", "op": op, "pass": pass_name, "variant": variant, "seconds": seconds,
                  "first_call_s": first_s, "interpreter": interpreted}
        for amount, rate, table in (("bytes", "bytes_per_s", case.bytes), ("flops", "flop_per_s", case.flops)):
            if table.get(pass_name):
                record[amount] = table[pass_name]
                record[rate] = table[pass_name] / seconds
        ctx.emit(record)
