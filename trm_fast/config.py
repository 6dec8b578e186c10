"""Training configuration: one dataclass tree, named presets, and `field=value` overrides.

`TrainConfig` holds everything a run needs except what the data decides (vocabulary, sequence
length, number of puzzle identifiers), which is filled in when the model is built. Defaults follow
the reference project's Maze-Hard run (pretrain.py + config/cfg_pretrain.yaml + its README command);
presets change only what they list.

    cfg = preset("maze-cpu")
    apply_overrides(cfg, ["model.hidden_size=128", "lr=3e-4", "max_minutes=none"])
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from trm_fast.model.reference import TRMConfig


class ConfigError(ValueError):
    """A bad configuration field or value; the message is one line meant for the user."""


# The architecture fields of a run: TRMConfig's own fields and defaults (one definition), less those
# the data decides when the model is built.
DATA_FIELDS = ("vocab_size", "seq_len", "num_puzzle_identifiers")
ModelSettings = dataclasses.make_dataclass(
    "ModelSettings",
    [
        (f.name, hint, field(default=f.default))
        for f in dataclasses.fields(TRMConfig)
        for hint in [typing.get_type_hints(TRMConfig)[f.name]]
        if f.name not in DATA_FIELDS
    ],
)
ModelSettings.__module__ = __name__
ModelSettings.__doc__ = "TRMConfig's architecture fields (everything but DATA_FIELDS), with its defaults."


@dataclass
class MazeSettings:
    """The built-in maze generator (used when `dataset` is "maze")."""

    size: int = 30
    num_train: int = 1000
    num_test: int = 1000
    seed: int = 0
    augment: bool = False
    # "corridors" (spanning-tree corridors) or "random" (walls cell by cell, as Maze-Hard); the
    # random style draws each maze's wall share from [wall_share_min, wall_share_max].
    style: str = "random"
    wall_share_min: float = 0.3
    wall_share_max: float = 0.5


@dataclass
class TrackingSettings:
    """Experiment tracking of every metrics.jsonl record (trm_fast.tracking; docs/tracking.md)."""

    library: str = "none"  # none | tensorboard (event files in <run dir>/tensorboard) | wandb
    project: str = "trm-fast"  # W&B project
    run_name: Optional[str] = None  # W&B run name; none = the run directory's name


@dataclass
class TrainConfig:
    preset: str = ""
    # Data: "maze" or "sudoku" (built-in generators, cached under data_dir) or a reference-layout folder.
    dataset: str = "maze"
    data_dir: Optional[str] = None
    maze: MazeSettings = field(default_factory=MazeSettings)
    sudoku: "SudokuSettings" = field(default_factory=lambda: SudokuSettings())  # defined below the maze presets
    model: ModelSettings = field(default_factory=ModelSettings)
    loss_type: str = "stablemax"  # stablemax | softmax

    # Length of training: `epochs` as in the reference (sets the schedule's length), bounded further
    # by max_steps and max_minutes (per invocation).
    global_batch_size: int = 768
    # Each process splits its share of the global batch into micro-batches of this size (each with
    # its own ACT carry, gradients accumulated, one optimizer step per global batch). None = the
    # whole share on CPU; on CUDA the largest that fits (activation estimate vs free memory).
    micro_batch_size: Optional[int] = None
    recompute: bool = False  # recompute the gradient cycle's activations in backward (fast engine)
    epochs: int = 50000
    max_steps: Optional[int] = None
    max_minutes: Optional[float] = None

    # AdamATan2 with linear warmup then cosine decay to lr * lr_min_ratio (1.0 = constant).
    lr: float = 1e-4
    lr_min_ratio: float = 1.0
    lr_warmup_steps: int = 2000
    weight_decay: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.95
    # Sign-SGD for the puzzle-embedding rows, same schedule shape.
    puzzle_emb_lr: float = 1e-4
    puzzle_emb_weight_decay: float = 1.0

    ema: bool = True
    ema_rate: float = 0.999
    seed: int = 0

    # Periodic evaluation every eval_interval steps on at most eval_examples test examples
    # (None = the whole split); the final evaluation always uses the whole test split.
    eval_interval: Optional[int] = None
    eval_examples: Optional[int] = None
    eval_batch_size: Optional[int] = None  # None = global_batch_size
    log_interval: int = 50
    checkpoint_interval: Optional[int] = None  # None = at every evaluation
    keep_checkpoints: int = 3

    device: str = "auto"  # auto | cpu | cuda
    engine: str = "fast"  # fast (fused recursion) | reference (the readable spec model)
    backend: str = "auto"  # auto | torch | triton | cuda (fused ops)
    compile: bool = False  # torch.compile the model
    # Op 7 (injection sum in the matmul prologue) in the fast engine; off until a GPU shows it wins.
    fused_linear: bool = False
    # Capture the whole training step in one CUDA graph (single GPU process). Off by default until
    # it has been verified on hardware: see the GPU report in bench/results.
    cuda_graphs: bool = False
    num_threads: int = 0  # CPU threads for torch (0 = torch's default)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)


CHOICES = {
    "loss_type": ("stablemax", "softmax"),
    "device": ("auto", "cpu", "cuda"),
    "engine": ("fast", "reference"),
    "backend": ("auto", "torch", "triton", "cuda"),
    "model.pos_encodings": ("rope", "learned", "none"),
    "maze.style": ("corridors", "random"),
    "model.forward_dtype": ("float32", "bfloat16", "float16"),
    "tracking.library": ("none", "tensorboard", "wandb"),
}


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


def _maze_cpu() -> TrainConfig:
    """Random-wall mazes (the Maze-Hard style) and a width-64 TRM (T=2, n=2), compiled, that learn on
    a 2-core laptop CPU and stop by themselves after ~15 minutes with a held-out evaluation. Chosen by
    experiment (README, *Measured figures*). The forward runs in bf16 as in the paper: on a CPU with
    native bf16 dot products (AVX512-BF16, AMX) the compiled step is ~1.4x faster than in float32;
    other CPUs run float32 (trm_fast.train.step.runnable_model_config)."""
    return TrainConfig(
        preset="maze-cpu",
        # Fresh mazes are cheap (20,000 in a few seconds): enough that ~6,000 steps of 64 never
        # repeat a maze more than ~20 times.
        maze=MazeSettings(size=7, num_train=20000, num_test=500),
        model=ModelSettings(
            hidden_size=64,
            num_heads=4,
            h_cycles=2,
            l_cycles=2,
            puzzle_emb_len=1,
            halt_max_steps=8,
            forward_dtype="bfloat16",
        ),
        max_steps=5000,  # sets the cosine schedule's length; ~15 min on 2 idle cores
        **_CPU_TRAINING,
    )


@dataclass
class SudokuSettings:
    """The built-in Sudoku generator (used when `dataset` is "sudoku"; trm_fast.data.sudoku)."""

    size: int = 9
    # Boxes of box_rows x box_cols cells (product = size); none = the most square (9: 3x3, 6: 2x3).
    box_rows: Optional[int] = None
    box_cols: Optional[int] = None
    num_train: int = 1000
    num_test: int = 1000
    num_aug: int = 1000  # augmented copies of every training puzzle (the original is kept too)
    min_rating: int = 0  # minimum solver rating (guesses to prove uniqueness; 0 = any puzzle)
    seed: int = 0


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
    laptop CPU within ~15 minutes. Chosen by experiment (README, *Sudoku*): 6x6 reached 97.5% exact on
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


PRESETS = {"maze-paper": _maze_paper, "maze-cpu": _maze_cpu, "sudoku-paper": _sudoku_paper,
           "sudoku-att-paper": _sudoku_att_paper, "sudoku-cpu": _sudoku_cpu}
BUILTIN_DATASETS = ("maze", "sudoku")


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()


def default_preset_name(cuda_available: bool, dataset: Optional[str] = None) -> str:
    """The preset for a dataset kind ("maze", the default, or "sudoku"): the paper's run with CUDA,
    the CPU preset without."""
    if dataset == "sudoku":
        return "sudoku-paper" if cuda_available else "sudoku-cpu"
    return "maze-paper" if cuda_available else "maze-cpu"


# ----------------------------------------------------------------------------------------------
# Overrides


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(annotation) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin is Union or (hasattr(types, "UnionType") and origin is getattr(types, "UnionType")):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _parse_value(path: str, text: str, annotation) -> Any:
    target, optional = _unwrap_optional(annotation)
    if optional and text.strip().lower() in ("none", "null", ""):
        return None
    text = text.strip()
    try:
        if target is bool:
            lowered = text.lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError
        if target is int:
            return int(text)
        if target is float:
            return float(text)
        if target is str:
            return text
    except ValueError:
        kind = {bool: "true/false", int: "an integer", float: "a number"}[target]
        extra = " or none" if optional else ""
        raise ConfigError(f"{path}: expected {kind}{extra}, got {text!r}") from None
    raise ConfigError(f"{path}: cannot be set from the command line")


def _unknown_field(path: str, name: str, candidates) -> ConfigError:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown config field {path!r}{hint}")


def split_assignment(item: str) -> tuple[str, str]:
    """"field=value" -> ("field", "value")."""
    if "=" not in item:
        raise ConfigError(f"{item!r} is not of the form field=value")
    path, text = item.split("=", 1)
    return path.strip(), text


def parse_fields(cls, items: list[str]) -> dict[str, Any]:
    """{"field": value} of a flat dataclass `cls` from ["field=value", ...], typed and checked."""
    hints = _field_types(cls)
    values = {}
    for item in items:
        name, text = split_assignment(item)
        if name not in hints:
            raise _unknown_field(name, name, hints)
        values[name] = _parse_value(name, text, hints[name])
    return values


def set_field(cfg: TrainConfig, path: str, text: str) -> None:
    """Set cfg.<path> (dotted) from its string form, checking the name and type."""
    parts = path.split(".")
    holder = cfg
    for depth, name in enumerate(parts):
        types_here = _field_types(type(holder))
        if name not in types_here:
            raise _unknown_field(path, name, types_here)
        annotation = types_here[name]
        if depth < len(parts) - 1:
            holder = getattr(holder, name)
            if not dataclasses.is_dataclass(holder):
                raise ConfigError(f"{'.'.join(parts[: depth + 1])} has no sub-fields (in {path!r})")
            continue
        if dataclasses.is_dataclass(getattr(holder, name)):
            subfields = ", ".join(f.name for f in dataclasses.fields(getattr(holder, name)))
            raise ConfigError(f"{path} is a group; set one of its fields: {path}.<{subfields}>")
        value = _parse_value(path, text, annotation)
        if path in CHOICES and value not in CHOICES[path]:
            raise ConfigError(f"{path}: expected one of {', '.join(CHOICES[path])}, got {value!r}")
        setattr(holder, name, value)


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply ["a.b=value", ...] in order; raises ConfigError on a bad name, type or value."""
    for item in overrides:
        set_field(cfg, *split_assignment(item))
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Cross-field and range checks that a type alone cannot express."""

    def need(condition: bool, message: str) -> None:
        if not condition:
            raise ConfigError(message)

    for path, allowed in CHOICES.items():
        value = get_field(cfg, path)
        need(value in allowed, f"{path}: expected one of {', '.join(allowed)}, got {value!r}")
    need(cfg.global_batch_size >= 1, f"global_batch_size must be >= 1, got {cfg.global_batch_size}")
    need(cfg.micro_batch_size is None or cfg.micro_batch_size >= 1,
         f"micro_batch_size must be >= 1 or none, got {cfg.micro_batch_size}")
    for option in ("recompute", "fused_linear"):
        need(not getattr(cfg, option) or cfg.engine == "fast", f"{option}=true needs engine=fast (the reference is the plain spec)")
    need(cfg.epochs >= 1, f"epochs must be >= 1, got {cfg.epochs}")
    need(cfg.max_steps is None or cfg.max_steps >= 0, f"max_steps must be >= 0, got {cfg.max_steps}")
    need(cfg.max_minutes is None or cfg.max_minutes > 0, f"max_minutes must be > 0, got {cfg.max_minutes}")
    for name in ("lr", "puzzle_emb_lr", "weight_decay", "puzzle_emb_weight_decay", "lr_warmup_steps"):
        need(getattr(cfg, name) >= 0, f"{name} must be >= 0, got {getattr(cfg, name)}")
    need(0.0 <= cfg.lr_min_ratio <= 1.0, f"lr_min_ratio must be in [0, 1], got {cfg.lr_min_ratio}")
    for name in ("beta1", "beta2", "ema_rate"):
        need(0.0 <= getattr(cfg, name) < 1.0, f"{name} must be in [0, 1), got {getattr(cfg, name)}")
    for name in ("eval_interval", "eval_examples", "eval_batch_size", "checkpoint_interval"):
        value = getattr(cfg, name)
        need(value is None or value >= 1, f"{name} must be >= 1 or none, got {value}")
    need(cfg.log_interval >= 1, f"log_interval must be >= 1, got {cfg.log_interval}")
    need(cfg.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {cfg.keep_checkpoints}")
    need(cfg.tracking.project.strip() != "", "tracking.project must not be empty")
    model = cfg.model
    for name in ("hidden_size", "num_heads", "num_layers", "h_cycles", "l_cycles", "halt_max_steps"):
        need(getattr(model, name) >= 1, f"model.{name} must be >= 1, got {getattr(model, name)}")
    need(model.expansion > 0, f"model.expansion must be > 0, got {model.expansion}")
    emb_ndim = model.hidden_size if model.puzzle_emb_ndim is None else model.puzzle_emb_ndim
    need(emb_ndim >= 0 and model.puzzle_emb_len >= 0, "model.puzzle_emb_ndim/len must be >= 0")
    need(
        model.puzzle_emb_len == 0 or emb_ndim <= model.puzzle_emb_len * model.hidden_size,
        f"model.puzzle_emb_ndim {emb_ndim} does not fit in model.puzzle_emb_len {model.puzzle_emb_len} "
        f"prefix tokens of model.hidden_size {model.hidden_size}",
    )
    need(0.0 <= model.halt_exploration_prob <= 1.0, "model.halt_exploration_prob must be in [0, 1]")
    need(
        model.mlp_t or model.hidden_size % model.num_heads == 0,
        f"model.hidden_size {model.hidden_size} is not divisible by model.num_heads {model.num_heads}",
    )
    maze = cfg.maze
    need(maze.size >= 3, f"maze.size must be >= 3, got {maze.size}")
    need(maze.num_train >= 1 and maze.num_test >= 1, "maze.num_train and maze.num_test must be >= 1")
    need(0.0 <= maze.wall_share_min <= maze.wall_share_max < 1.0,
         f"maze.wall_share_min/max must satisfy 0 <= min <= max < 1, got {maze.wall_share_min}/{maze.wall_share_max}")
    sudoku = cfg.sudoku
    from trm_fast.data.errors import DataError
    from trm_fast.data.sudoku import geometry as sudoku_geometry

    try:
        sudoku_geometry(sudoku.size, sudoku.box_rows, sudoku.box_cols)
    except DataError as error:
        raise ConfigError(f"sudoku.size/box_rows/box_cols: {error.problem}") from None
    need(sudoku.num_train >= 1 and sudoku.num_test >= 1, "sudoku.num_train and sudoku.num_test must be >= 1")
    need(sudoku.num_aug >= 0 and sudoku.min_rating >= 0, "sudoku.num_aug and sudoku.min_rating must be >= 0")


def get_field(cfg: TrainConfig, path: str) -> Any:
    holder = cfg
    for name in path.split("."):
        holder = getattr(holder, name)
    return holder


# ----------------------------------------------------------------------------------------------
# Serialisation


def to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(values: dict) -> TrainConfig:
    """Inverse of to_dict; unknown keys are an error (a config from a newer version, or a typo)."""

    def build(cls, data: dict, prefix: str):
        if not isinstance(data, dict):
            raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
        hints = _field_types(cls)
        kwargs = {}
        for key, value in data.items():
            if key not in hints:
                raise _unknown_field(prefix + key, key, hints)
            sub_cls = hints[key]
            if dataclasses.is_dataclass(sub_cls):
                kwargs[key] = build(sub_cls, value, prefix + key + ".")
            else:
                kwargs[key] = value
        return cls(**kwargs)

    cfg = build(TrainConfig, values, "")
    validate(cfg)
    return cfg


def save_json(cfg: TrainConfig, path) -> None:
    with open(path, "w") as handle:
        json.dump(to_dict(cfg), handle, indent=2, sort_keys=False)
        handle.write("\n")


def load_json(path) -> TrainConfig:
    try:
        with open(path) as handle:
            values = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: cannot read config ({error})") from None
    return from_dict(values)


def model_config(cfg: TrainConfig, vocab_size: int, seq_len: int, num_puzzle_identifiers: int = 1) -> TRMConfig:
    """The TRMConfig of this training config for data of this shape."""
    values = dataclasses.asdict(cfg.model)
    values.update(vocab_size=vocab_size, seq_len=seq_len, num_puzzle_identifiers=num_puzzle_identifiers)
    try:
        return TRMConfig.from_dict(values)
    except ValueError as error:
        raise ConfigError(f"model config: {error}") from None
