"""Named training configurations: the paper's runs, the CPU runs, and what an ablation study
changes on top of each (`STUDY_OVERRIDES`).

    cfg = preset("maze-cpu")                                  # a TrainConfig (trm_fast.config)
    name = default_preset_name(torch.cuda.is_available(), "sudoku")

The ARC presets (arc-paper, arc2-paper, arc-cpu) keep the best checkpoint by the vote's pass@2.

Each preset is a function, so every call returns a fresh config; presets change only what they list
and are valid as they stand.
"""
from __future__ import annotations

from typing import Optional

from trm_fast.config import ArcSettings, ConfigError, MazeSettings, ModelSettings, SudokuSettings, TrainConfig

# What the paper presets share (the reference cfg_pretrain.yaml): batch, schedule, optimizer and EMA.
_PAPER_TRAINING = dict(
    global_batch_size=768,
    epochs=50000,
    lr=1e-4,
    lr_warmup_steps=2000,
    weight_decay=1.0,
    puzzle_emb_lr=1e-4,
    puzzle_emb_weight_decay=1.0,
    ema_rate=0.999,
    # ~5000 epochs of 1000 examples (mazes; Sudoku: one augmented copy of each of 1000 groups) at
    # batch 768, as the reference evaluates
    eval_interval=6500,
    log_interval=50,
)


def _maze_paper() -> TrainConfig:
    """The reference Maze-Hard 30x30 run: README command + cfg_pretrain.yaml + arch/trm.yaml."""
    return TrainConfig(
        preset="maze-paper",
        maze=MazeSettings(size=30, num_train=1000, num_test=1000),
        model=ModelSettings(hidden_size=512, num_heads=8, h_cycles=3, l_cycles=4, forward_dtype="bfloat16"),
        **_PAPER_TRAINING,
    )


# What the CPU presets share: a 2-core laptop's batch, schedule and budget (maze-cpu and sudoku-cpu
# differ in data, model and schedule length only).
_CPU_TRAINING = dict(
    global_batch_size=64,
    epochs=100000,
    max_minutes=13.5,  # stops earlier on a slower machine, still with the held-out evaluation
    # torch.compile (inductor's C++ code), as both presets' figures were measured: with the presets'
    # bf16 forward it is the fastest CPU step measured (bench/bench_cpu_preset.py), after ~30 s of
    # compile inside max_minutes; eager with one printed line where it cannot compile.
    compile=True,
    lr=1e-3,
    lr_min_ratio=0.1,
    lr_warmup_steps=100,
    weight_decay=0.1,
    puzzle_emb_lr=1e-3,
    puzzle_emb_weight_decay=0.1,
    ema_rate=0.995,
    eval_interval=1000,
    eval_examples=200,
    log_interval=20,
    checkpoint_interval=500,
    device="cpu",
)

# The attention TRM of the CPU presets (maze-cpu, arc-cpu): T=2, n=2, a 1-token puzzle prefix, at most
# 8 supervision steps, a bf16 forward where the CPU has native bf16 (else float32).
_CPU_MODEL = dict(num_heads=4, h_cycles=2, l_cycles=2, puzzle_emb_len=1, halt_max_steps=8, forward_dtype="bfloat16")


def _maze_cpu() -> TrainConfig:
    """Random-wall mazes (the Maze-Hard style) and a width-64 TRM (T=2, n=2), compiled, that learn on
    a 2-core laptop CPU and stop by themselves after ~15 minutes with a held-out evaluation. Chosen by
    experiment (docs/presets.md). The forward runs in bf16 as in the paper: on a CPU with
    native bf16 dot products (AVX512-BF16, AMX) the compiled step is ~1.4x faster than in float32;
    other CPUs run float32 (trm_fast.train.step.runnable_model_config)."""
    return TrainConfig(
        preset="maze-cpu",
        # Fresh mazes are cheap (20,000 in a few seconds): enough that ~7,000 steps of 64 show each
        # maze ~20 times (60,000 did not help on 8x8, docs/results.md).
        maze=MazeSettings(size=7, num_train=20000, num_test=500),
        # At most 4 supervision steps instead of 8: until the halting head learns to stop, each maze
        # stays halt_max_steps steps in the batch, so 4 shows new mazes twice as often (7x7: 96.2% vs
        # 90.0% held out in the same 13.5 minutes, and better on other generators' mazes; docs/results.md).
        model=ModelSettings(hidden_size=64, **{**_CPU_MODEL, "halt_max_steps": 4}),
        # No step count: the schedule is measured to fill max_minutes (trm_fast.budget), so a fast
        # machine trains longer and a slow one still finishes its cosine; the run's config.json
        # records the length, and --max-steps N reruns it.
        max_steps=None,
        **_CPU_TRAINING,
    )


# Generated "hard" Sudoku for the paper presets: the solver needs >= 10 guesses to prove the solution
# unique (about the hardest 15% of random minimal puzzles; Sudoku-Extreme is a hard set too).
SUDOKU_HARD_RATING = 10


def _sudoku_paper() -> TrainConfig:
    """The reference Sudoku-Extreme run with TRM-MLP (paper table: 87.4%): `arch.mlp_t=True
    arch.pos_encodings=none`, T=3, n=6, 1000 training puzzles x 1000 augmentations, lr 1e-4, weight
    decay 1.0, 50,000 epochs, evaluation every 5,000. The puzzles are generated here (hard ones,
    min_rating SUDOKU_HARD_RATING) instead of downloaded; pass a folder built from the Sudoku-Extreme
    CSV files (`convert_sudoku_csv`) as --dataset for the published data."""
    return TrainConfig(
        preset="sudoku-paper",
        dataset="sudoku",
        sudoku=SudokuSettings(size=9, num_train=1000, num_test=1000, num_aug=1000, min_rating=SUDOKU_HARD_RATING),
        model=ModelSettings(hidden_size=512, num_heads=8, h_cycles=3, l_cycles=6, mlp_t=True, pos_encodings="none",
                            halt_max_steps=16, forward_dtype="bfloat16"),
        **_PAPER_TRAINING,
    )


def _sudoku_att_paper() -> TrainConfig:
    """TRM-Att on Sudoku (paper table: 74.7%): sudoku-paper with self-attention and RoPE."""
    cfg = _sudoku_paper()
    cfg.preset = "sudoku-att-paper"
    cfg.model.mlp_t = False
    cfg.model.pos_encodings = "rope"
    return cfg


def _sudoku_cpu() -> TrainConfig:
    """6x6 Sudoku (2x3 boxes) and a width-64 TRM-MLP (T=2, n=2), compiled, that learn on a 2-core
    laptop CPU within ~15 minutes. Chosen by experiment (docs/presets.md): 6x6 reached 97.5% exact on
    held-out puzzles at 2,000 steps on one core, while 9x9 with the same model had no puzzle exact
    and 57% of cells right at 500 steps, at half the steps/s. bf16 forward as in maze-cpu (2.2x the
    steps/s of float32 compiled here, the same accuracy)."""
    return TrainConfig(
        preset="sudoku-cpu",
        dataset="sudoku",
        sudoku=SudokuSettings(size=6, num_train=1000, num_test=500, num_aug=100),  # boxes 2x3
        model=ModelSettings(
            hidden_size=64,
            num_heads=4,
            h_cycles=2,
            l_cycles=2,
            mlp_t=True,
            pos_encodings="none",
            puzzle_emb_len=1,
            halt_max_steps=8,
            forward_dtype="bfloat16",  # as maze-cpu: native bf16 where the CPU has it, else float32
        ),
        max_steps=6000,  # sets the cosine schedule's length; ~10 min on 2 idle cores with native bf16
        **_CPU_TRAINING,
    )


# The reference ARC-AGI runs (its README command + cfg_pretrain.yaml + arch/trm.yaml): what
# differs from the Sudoku/Maze runs is weight decay 0.1, the puzzle-embedding lr 1e-2, 100,000
# epochs with an evaluation every 10,000, and the best checkpoint kept by the vote's pass@2.
_ARC_PAPER_TRAINING = dict(
    _PAPER_TRAINING,
    epochs=100000,
    weight_decay=0.1,
    puzzle_emb_lr=1e-2,
    puzzle_emb_weight_decay=0.1,
    best_metric="pass@2",
    device="cuda",
)
# An ARC epoch samples one augmented puzzle per task (group) with all its training pairs: ARC-1
# (training all pairs + evaluation demonstrations, 800 tasks) 3,081 examples = 4.01 batches of 768,
# ARC-2 (training2 + evaluation2 demonstrations, 1,120 tasks) 4,666 = 6.08 batches; 10,000 epochs
# are ~40,100 and ~60,800 steps.
ARC_EVAL_INTERVAL = {1: 40100, 2: 60800}


def _arc_paper_model() -> ModelSettings:
    """The reference ARC model: TRM-Att, width 512, 8 heads, 2 layers, T=3, n=4, 16 supervision
    steps, 16 puzzle-prefix tokens and a 512-wide puzzle embedding (one row per augmented puzzle)."""
    return ModelSettings(hidden_size=512, num_heads=8, num_layers=2, h_cycles=3, l_cycles=4, halt_max_steps=16,
                         puzzle_emb_len=16, puzzle_emb_ndim=512, forward_dtype="bfloat16")


def _arc_paper_run(version: int) -> TrainConfig:
    """The reference ARC run on ARC-AGI-`version`: training + evaluation tasks (their test pairs held
    out of the evaluation set), 1000 augmentations each."""
    return TrainConfig(
        preset="arc-paper" if version == 1 else f"arc{version}-paper",
        dataset="arc",
        arc=ArcSettings(version=version, num_aug=1000),
        model=_arc_paper_model(),
        **dict(_ARC_PAPER_TRAINING, eval_interval=ARC_EVAL_INTERVAL[version]),
    )


def _arc_paper() -> TrainConfig:
    """The reference ARC-AGI-1 run (paper: TRM-Att 44.6% pass@2); ConceptARC (not on PyPI) is left out
    unless arc.json_dir holds its files and arc.subsets names it. ~3 days on 4 H100 in the reference."""
    return _arc_paper_run(1)


def _arc2_paper() -> TrainConfig:
    """arc-paper on ARC-AGI-2 (paper: TRM-Att 7.8%): training2 + evaluation2, test set evaluation2."""
    return _arc_paper_run(2)


def _arc_cpu() -> TrainConfig:
    """ARC-AGI-1 on a 2-core CPU in half an hour, chosen by experiment (docs/arc.md): the 59 tasks
    whose grids fit a 6x6 canvas, 8 augmentations each (each augmented puzzle's embedding is seen
    often enough to learn its task), a width-96 TRM (T=2, n=2). Held out: the test inputs of the 46
    such tasks of the training subset (their demonstrations are trained on, as the reference does for
    the evaluation tasks); the 13 evaluation tasks that fit are trained on whole."""
    return TrainConfig(
        preset="arc-cpu",
        dataset="arc",
        arc=ArcSettings(version=1, canvas=6, num_aug=8, test_subset="training"),
        model=ModelSettings(hidden_size=96, **_CPU_MODEL),
        **dict(
            _CPU_TRAINING,
            puzzle_emb_lr=1e-2,  # the reference ARC runs' (maze-cpu's 1e-3 was not tried here)
            max_minutes=30,  # the schedule fills 30 minutes (trm_fast.budget)
            eval_examples=None,  # the whole test split (477 examples): pass@k needs every augmentation
            eval_interval=250,  # a vote takes seconds: a pass@k curve with a dozen points
            best_metric="pass@2",
        ),
    )


PRESETS = {"maze-paper": _maze_paper, "maze-cpu": _maze_cpu, "sudoku-paper": _sudoku_paper,
           "sudoku-att-paper": _sudoku_att_paper, "sudoku-cpu": _sudoku_cpu,
           "arc-paper": _arc_paper, "arc2-paper": _arc2_paper, "arc-cpu": _arc_cpu}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()


def default_preset_name(cuda_available: bool, dataset: Optional[str] = None) -> str:
    """The preset for a dataset kind (a name of trm_fast.puzzles.KINDS; default "maze"): the paper's
    run with CUDA, the CPU preset without."""
    from trm_fast.puzzles import DEFAULT_KIND, get_kind

    with_cuda, without = (get_kind(dataset) or get_kind(DEFAULT_KIND)).default_presets
    return with_cuda if cuda_available else without


# What a study changes on top of a preset: a deterministic budget by steps (the cosine schedule
# spans exactly it), periodic held-out evaluation, finer logging, and checkpoints for resuming.
#
# maze-cpu: 600 steps per variant, runs one after the other with one torch thread. Measured on this
# project's 2-core machine (shared with other jobs), one run at a time: baseline 1.5 steps/s, no-ema
# 1.4, less-recursion 4.0, bigger-brain 1.1, so ~26 min of training for the four plus ~4 min of
# evaluations (100 test mazes every 100 steps, all 500 at the end). One thread because two threads
# on a busy 2-core machine slow the small ops ~25x (docs/presets.md); two runs at a time (--jobs 2) ran each
# at half speed there, no faster in total, but help on a machine with idle cores. One thread per run
# also keeps the numbers independent of --jobs.
# maze-paper: the paper's model and data with a short schedule (not yet measured on a GPU; about
# 4.3 s per step for the four variants together at 35% MFU on an H100 by trm_fast.flops, so ~1.2
# hours for 1000 steps each).
STUDY_OVERRIDES = {
    # The tutorial's study stays on the 6x6 corridor mazes it was measured on (docs/ablation): there
    # 600 steps separate the variants, while on the preset's random-wall 7x7 mazes the preset's model
    # is at 27% exact after 1,000 steps. Eager, float32 and 8 supervision steps, as measured.
    "maze-cpu": (
        "maze.style=corridors", "maze.size=6", "maze.num_train=2000", "compile=false", "model.forward_dtype=float32",
        "model.halt_max_steps=8",
        "max_steps=600", "max_minutes=none", "lr_warmup_steps=100", "eval_interval=100", "eval_examples=100",
        "checkpoint_interval=100", "log_interval=10", "num_threads=1",
    ),
    "maze-paper": (
        "max_steps=1000", "max_minutes=none", "lr_warmup_steps=100", "eval_interval=250", "eval_examples=256",
        "checkpoint_interval=250", "log_interval=10",
    ),
    # The Sudoku study: the same budgets as the maze study's (not measured yet; sudoku-cpu's own model
    # was at 73% exact on held-out puzzles after 1,000 steps, docs/results.md).
    "sudoku-cpu": (
        "max_steps=600", "max_minutes=none", "lr_warmup_steps=100", "eval_interval=100", "eval_examples=100",
        "checkpoint_interval=100", "log_interval=10", "num_threads=1",
    ),
    "sudoku-paper": (
        "max_steps=1000", "max_minutes=none", "lr_warmup_steps=100", "eval_interval=250", "eval_examples=256",
        "checkpoint_interval=250", "log_interval=10",
    ),
}
