"""What `python -m bench.report` runs, in order of value, with each task's time on an H200.

A task is one result (or one small group of results) measured by one function of
`bench.report.tasks` inside a worker process (`bench.report.worker`), or by a command (the CUDA
extension build, the GPU unit tests). Consecutive tasks with the same `process` key share one worker
process; a failed task ends its worker, so the next task starts in a fresh one (a CUDA error poisons
the process it happened in, never the next task). Risky code (our attention and fused linear kernels,
the CUDA extension, CUDA graphs) has process keys of its own.

`gpu_s` is the estimated wall time on one H200 (worker start included: ~4 s for Python + torch +
CUDA context + trm_fast): the budget check skips a task when less than this is left. `cpu_s` is the
same for the `--tiny` dry run on 2 CPU cores (measured, see README "Benchmarks").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

# The report's parts, in the order of the issue (most valuable first).
PARTS = {
    1: "environment and ceilings",
    2: "correctness at the paper shapes",
    3: "maze_att training step",
    4: "sudoku_mlp training step",
    5: "attention backends",
    6: "per-op bandwidth",
    7: "GPU unit tests",
    8: "sudoku_att step and evaluation",
}

BUILD_TASK = "build/cuda_ext"
GPU_TESTS_TASK = "gpu_tests"

# Model-level correctness: (case, backend label). "triton_fused_linear" is the triton engine with the
# x+y+z injection fused into the qkv projection (attention cases only).
CORRECTNESS = (("maze_att", "torch"), ("sudoku_mlp", "torch"), ("maze_att", "triton"), ("sudoku_mlp", "triton"),
               ("maze_att", "triton_fused_linear"), ("maze_att", "cuda"), ("sudoku_mlp", "cuda"))
# (the op-level checks of a backend follow its model-level ones, in the same worker process)
# Plain ops also compiled with inductor (each costs ~13 s of compiles: the main memory-bound op only).
COMPILED_OPS = ("rms_norm_residual_inject",)
# Whole-step engines per case, most informative first; the compiled reference (a 1-2 min inductor
# compile of the unrolled recursion) last, so a tight budget drops it before any of ours.
STEP_ENGINES = ("reference", "fast_torch", "fast_triton", "fast_triton_fused_linear", "fast_cuda", "fast_triton_graphs",
                "fast_cuda_graphs", "reference_compiled")
ATTENTION_BACKENDS = ("sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "sdpa_default", "triton")
EVAL_ENGINES = ("reference", "fast_torch", "fast_triton", "fast_cuda")


@dataclass
class Task:
    id: str
    part: int
    fn: Optional[str]  # worker function (bench.report.tasks.TASKS); None for a command task
    args: dict = field(default_factory=dict)
    process: str = ""  # consecutive tasks with the same key share a worker process
    gpu_s: float = 10.0  # estimated wall seconds on an H200 (the budget check)
    cpu_s: float = 5.0  # the same for --tiny on 2 CPU cores
    limit_s: float = 180.0  # time limit on a GPU (the budget may cut it shorter)
    needs_gpu: bool = False  # recorded as unavailable without a CUDA device (no process is started)
    after: tuple = ()  # tasks that must have finished first (the CUDA extension build)
    needs_build: bool = False  # unavailable when the CUDA extension build did not succeed
    background: bool = False  # started without waiting: runs beside the next tasks
    timing: bool = False  # measures time: runs only while no background task runs (a quiet GPU)
    in_tiny: bool = True  # part of the --tiny dry run (False: the same code path as a task that is)

    def estimate(self, tiny: bool) -> float:
        return self.cpu_s if tiny else self.gpu_s


def _engine_process(case: str, engine: str) -> str:
    # The plain-PyTorch engines are the safe baselines and share a process; each of ours runs alone.
    return f"step-eager-{case}" if engine in ("reference", "fast_torch") else f"step-{engine}-{case}"


def _step_tasks(case: str, part: int, engines, maze: bool, attention: Optional[bool] = None) -> list[Task]:
    # H200 estimates: maze_att is 768 x 916 tokens per step (~300 model TFLOP: ~1-2 s, 2 micro-batches
    # of 384), 1 warm-up + 3 timed steps (2 warm-ups with CUDA graphs: warm-up, capture; and compiled);
    # sudoku_mlp is 768 x 97 tokens (~30 TFLOP, ~0.2 s). Triton JIT is cached on disk by the
    # correctness part. reference_compiled: inductor compile of the unrolled recursion, forward + backward.
    per_engine = {  # (H200 s, tiny CPU s), worker start excluded
        "reference": (10, 1), "fast_torch": (6, 0.3), "fast_triton": (6, 3), "fast_triton_fused_linear": (6, 3),
        "fast_cuda": (6, 1), "fast_triton_graphs": (7, 1), "fast_cuda_graphs": (7, 1), "reference_compiled": (105, 5),
    } if maze else {
        "reference": (4, 1), "fast_torch": (3, 0.3), "fast_triton": (3, 3), "fast_triton_fused_linear": (3, 3),
        "fast_cuda": (3, 1), "fast_triton_graphs": (4, 1), "fast_cuda_graphs": (4, 1), "reference_compiled": (90, 5),
    }
    tasks = []
    for engine in engines:
        if engine == "fast_triton_fused_linear" and not (maze if attention is None else attention):
            continue  # TRM-MLP has no attention: the fused qkv projection does not apply
        gpu_s, cpu_s = per_engine[engine]
        tasks.append(Task(
            f"step/{case}/{engine}", part, "train_step", {"case": case, "engine": engine},
            process=_engine_process(case, engine), gpu_s=gpu_s, cpu_s=cpu_s,
            limit_s=300.0 if engine == "reference_compiled" else 150.0,
            needs_gpu=engine.endswith("_graphs"), after=(BUILD_TASK,) if "cuda" in engine else (),
            needs_build="cuda" in engine, timing=True,
            in_tiny=maze or engine in ("reference", "fast_torch"),
        ))
    return tasks


def build_plan(tiny: bool = False) -> list[Task]:
    """Every task of the report, in the order they are started."""
    from trm_fast.ops.registry import bench_case_names

    # The op benchmarks of trm_fast.ops.registry (bench.bench_ops adds "copy", the yardstick only), and
    # those of ops with a CUDA C++ kernel.
    fused_ops, cuda_kernel_ops = bench_case_names(), bench_case_names(cuda_only=True)
    tasks = [
        Task("env", 1, "environment", process="env", gpu_s=3, cpu_s=1.5, limit_s=90),
        # nvcc on all cores beside the correctness part (it needs no GPU); the CUDA-backend tasks wait for it.
        Task(BUILD_TASK, 1, None, gpu_s=75, cpu_s=1, limit_s=300, needs_gpu=True, background=True),
        # xdist workers + a per-test timeout, beside the correctness part (correctness only, no timing).
        Task(GPU_TESTS_TASK, 7, None, gpu_s=60, cpu_s=15, limit_s=200, after=(BUILD_TASK,), background=True),
    ]
    # (H200 s, tiny CPU s) per (case, backend), worker start excluded. The first triton task JIT-compiles
    # the kernels of the forward and backward (~15 kernels, cached on disk for every later process).
    correctness_s = {("maze_att", "torch"): (5, 1.5), ("sudoku_mlp", "torch"): (2, 0.5), ("maze_att", "triton"): (25, 5),
                     ("sudoku_mlp", "triton"): (8, 1.5), ("maze_att", "triton_fused_linear"): (6, 4),
                     ("maze_att", "cuda"): (4, 1), ("sudoku_mlp", "cuda"): (3, 1)}
    for case, backend in CORRECTNESS:
        gpu_s, cpu_s = correctness_s[(case, backend)]
        tasks.append(Task(
            f"correctness/{case}/{backend}", 2, "correctness", {"case": case, "backend": backend},
            process=f"correct-{backend}", gpu_s=gpu_s, cpu_s=cpu_s, limit_s=240,
            needs_gpu=backend == "cuda", after=(BUILD_TASK,) if backend == "cuda" else (), needs_build=backend == "cuda",
        ))
        if backend in ("triton", "cuda") and case == "sudoku_mlp":
            # Each fused op of that backend, forward and backward, in the same process (kernels JIT-cached).
            ops = fused_ops if backend == "triton" else cuda_kernel_ops
            tasks += [Task(f"op_correctness/{op}/{backend}", 2, "op_correctness", {"op": op, "backend": backend},
                           process=f"correct-{backend}", gpu_s=2, cpu_s=0.5, needs_gpu=backend == "cuda",
                           after=(BUILD_TASK,) if backend == "cuda" else (), needs_build=backend == "cuda")
                      for op in ops]

    tasks += _step_tasks("maze_att", 3, STEP_ENGINES, maze=True)
    tasks += _step_tasks("sudoku_mlp", 4, STEP_ENGINES, maze=False)

    for backend in ATTENTION_BACKENDS:
        tasks.append(Task(
            f"attention/{backend}", 5, "attention_backend", {"backend": backend},
            process="attn-triton" if backend == "triton" else "attn-sdpa", gpu_s=4 if backend == "triton" else 2,
            cpu_s=2 if backend == "triton" else 0.5, limit_s=120,
            needs_gpu=backend.startswith("sdpa_") and backend != "sdpa_default",
            timing=True,
        ))

    # Per-op bandwidth: the copy (yardstick) and plain ops first, then ours, then compiled plain ops.
    ops = ("copy",) + fused_ops
    tasks += [Task(f"ops/{op}/plain", 6, "op_bandwidth", {"op": op, "variant": "plain"}, process="ops-plain",
                   gpu_s=0.7, cpu_s=0.3, limit_s=90, timing=True) for op in ops]
    tasks += [Task(f"ops/{op}/fused_triton", 6, "op_bandwidth", {"op": op, "variant": "fused_triton"},
                   process="ops-bw-triton", gpu_s=1, cpu_s=0.5, limit_s=90, timing=True) for op in fused_ops]
    tasks += [Task(f"ops/{op}/fused_cuda", 6, "op_bandwidth", {"op": op, "variant": "fused_cuda"}, process="ops-bw-cuda",
                   gpu_s=1, cpu_s=0.5, limit_s=90, needs_gpu=True, after=(BUILD_TASK,), needs_build=True, timing=True)
              for op in cuda_kernel_ops]
    tasks += [Task(f"ops/{op}/plain_compiled", 6, "op_bandwidth", {"op": op, "variant": "plain_compiled"},
                   process="ops-compiled", gpu_s=13, cpu_s=3, limit_s=120, timing=True, in_tiny=op == COMPILED_OPS[0])
              for op in COMPILED_OPS]

    sudoku_att = _step_tasks("sudoku_att", 8, ("reference", "fast_triton", "fast_triton_fused_linear", "fast_cuda",
                                               "fast_cuda_graphs"), maze=False, attention=True)
    for task in sudoku_att:
        task.in_tiny = False  # maze_att's code paths
    tasks += sudoku_att
    for case in ("maze_att", "sudoku_mlp"):
        for engine in EVAL_ENGINES:
            tasks.append(Task(
                f"eval/{case}/{engine}", 8, "eval_step", {"case": case, "engine": engine},
                process=f"eval-eager-{case}" if engine in ("reference", "fast_torch") else f"eval-{engine}-{case}",
                gpu_s=8 if case == "maze_att" else 4, cpu_s=3 if engine == "fast_triton" else 1, limit_s=120,
                after=(BUILD_TASK,) if engine == "fast_cuda" else (), needs_build=engine == "fast_cuda", timing=True,
                in_tiny=case == "sudoku_mlp" and engine in ("reference", "fast_torch"),
            ))
    if tiny:
        # The dry run: one worker per part (a failure still gets a fresh one), not one per risk as on a GPU.
        tasks = [task for task in tasks if task.in_tiny]
        for task in tasks:
            if task.fn is not None:
                task.process = f"tiny-part{task.part}"
    previous = None
    for task in tasks:
        task.args.setdefault("tiny", tiny)
        if not task.background and task.fn is not None:
            if task.process != previous:  # the first task of a worker process pays for its start
                task.gpu_s += WORKER_START_S[0]
                task.cpu_s += WORKER_START_S[1]
            previous = task.process
    return tasks


# Starting a worker: Python + torch + trm_fast imports (+ the CUDA context on a GPU), seconds (H200, CPU).
WORKER_START_S = (3.0, 2.5)


def estimate_by_part(tasks: list[Task], tiny: bool = False, background: bool = False) -> dict[int, float]:
    """Estimated seconds per part: of the foreground tasks, or (`background`) of those running beside them."""
    totals = {part: 0.0 for part in PARTS}
    for task in tasks:
        if task.background == background:
            totals[task.part] += task.estimate(tiny)
    return totals


def process_count(tasks: list[Task]) -> int:
    """Worker processes the plan starts when nothing fails (each failure adds one)."""
    count, previous = 0, None
    for task in tasks:
        if task.background or task.fn is None:
            count += task.fn is None
            continue
        if task.process != previous:
            count += 1
        previous = task.process
    return count
