"""Ablation studies: several variants of one base config trained side by side and compared.

The tutorial's experiment (four TRM configurations on mazes, compared by LM-loss curves and a table)
as a library; `trm-fast ablate` is a thin layer over it.

    study = make_study(out="runs/ablation-maze-cpu")            # the tutorial's four variants
    result = run_study(study)                                    # trains (resumable), then reports
    result.outputs   # {"png": .../ablation.png, "md": .../ablation.md, "json": .../ablation.json}

A study directory holds `study.json` (its settings: base config, variants, seeds), one ordinary run
directory per variant and seed (`<variant>-seed<N>`, usable with `trm-fast eval/solve/plot`), and
the three outputs. Running the same study again skips finished runs (final_eval.json present),
resumes unfinished ones from their newest checkpoint, and refuses different settings.

Everything reported is read back from the run directories' metrics.jsonl (`load_run`, which also
copes with the records a resumed run appends twice), so the table always equals the runs' files.
"""
from __future__ import annotations

import copy
import json
import os
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from trm_fast import budget as budget_lib
from trm_fast import config as config_lib
from trm_fast.config import ConfigError, TrainConfig

FORMAT = "trm-fast-ablation"
VERSION = 1
STUDY_FILE = "study.json"
OUTPUT_NAMES = {"png": "ablation.png", "md": "ablation.md", "json": "ablation.json"}


class StudyError(ConfigError):
    """A study or run directory that cannot be used as asked; the message is one line."""


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: tuple[str, ...] = ()

    def spec(self) -> str:
        return f"{self.name}:{','.join(self.overrides)}"


# The tutorial's four configurations ("Experimental Results: Ablation Studies in Practice"). Each
# names all four fields, so a variant means the same thing on any base config.
DEFAULT_VARIANTS = (
    Variant("baseline", ("model.num_layers=2", "model.h_cycles=3", "model.l_cycles=6", "ema=true")),
    Variant("no-ema", ("model.num_layers=2", "model.h_cycles=3", "model.l_cycles=6", "ema=false")),
    Variant("less-recursion", ("model.num_layers=2", "model.h_cycles=2", "model.l_cycles=2", "ema=true")),
    Variant("bigger-brain", ("model.num_layers=4", "model.h_cycles=3", "model.l_cycles=3", "ema=true")),
)
DEFAULT_VARIANT_NAMES = tuple(v.name for v in DEFAULT_VARIANTS)

# The paper's Sudoku ablations (table 1, Sudoku-Extreme exact accuracy): TRM-MLP with T=3, n=6 (87.4%),
# no EMA (79.9%), T=2, n=2 (73.7%), 4 layers with n=3 (79.5%), self-attention instead of the MLP
# (74.7%). Each names every field it is about, so it means the same on any base config.
_SUDOKU_MLP = ("model.mlp_t=true", "model.pos_encodings=none")
SUDOKU_VARIANTS = (
    Variant("baseline", ("model.num_layers=2", "model.h_cycles=3", "model.l_cycles=6", "ema=true") + _SUDOKU_MLP),
    Variant("no-ema", ("model.num_layers=2", "model.h_cycles=3", "model.l_cycles=6", "ema=false") + _SUDOKU_MLP),
    Variant("less-recursion", ("model.num_layers=2", "model.h_cycles=2", "model.l_cycles=2", "ema=true") + _SUDOKU_MLP),
    Variant("bigger-brain", ("model.num_layers=4", "model.h_cycles=3", "model.l_cycles=3", "ema=true") + _SUDOKU_MLP),
    Variant("attention", ("model.num_layers=2", "model.h_cycles=3", "model.l_cycles=6", "ema=true",
                          "model.mlp_t=false", "model.pos_encodings=rope")),
)


def builtin_variants(dataset: Optional[str]) -> tuple[Variant, ...]:
    """The study's default variants for a dataset kind: the paper's Sudoku ablations for "sudoku",
    the tutorial's four otherwise."""
    return SUDOKU_VARIANTS if dataset == "sudoku" else DEFAULT_VARIANTS

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
    # is at 27% exact after 1,000 steps. Eager and float32, as measured.
    "maze-cpu": (
        "maze.style=corridors", "maze.size=6", "maze.num_train=2000", "compile=false", "model.forward_dtype=float32",
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

# Short names for the table and legend; the tutorial's notation (T = H_cycles, n = L_cycles).
SHORT_NAMES = {"model.num_layers": "layers", "model.h_cycles": "T", "model.l_cycles": "n", "ema": "EMA",
               "model.mlp_t": "MLP", "model.pos_encodings": "pos", "model.hidden_size": "width", "seed": "seed"}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ITEM_START = re.compile(r",(?=\s*[A-Za-z_][\w.]*\s*=)")


# ----------------------------------------------------------------------------------------------
# Variants and the study's settings


def parse_variant(text: str, builtins: tuple[Variant, ...] = DEFAULT_VARIANTS) -> Variant:
    """"NAME:field=value,field=value" -> Variant. A built-in NAME (of `builtins`) alone is that
    variant; NAME:... of a built-in adds to its overrides; "NAME:" is the base config unchanged."""
    name, colon, rest = text.partition(":")
    name = name.strip()
    if not _NAME.match(name):
        raise StudyError(f"--variant {text!r}: the name must be letters, digits, '.', '_' or '-' (NAME:field=value,...)")
    builtin = {v.name: v for v in builtins}
    if not colon and name not in builtin:
        raise StudyError(f"--variant {text!r}: {name!r} is not a built-in variant ({', '.join(builtin)}); "
                         f"define it as {name}:field=value,...")
    items = tuple(item.strip() for item in _ITEM_START.split(rest)) if rest.strip() else ()
    for item in items:
        config_lib.split_assignment(item)
    base = builtin[name].overrides if name in builtin else ()
    return Variant(name, base + items)


def study_base_config(preset_name: Optional[str] = None, cuda_available: bool = False,
                      dataset: Optional[str] = None) -> TrainConfig:
    """The preset a study starts from (maze-paper / sudoku-paper with CUDA, maze-cpu / sudoku-cpu
    without, by the dataset kind) with STUDY_OVERRIDES."""
    name = preset_name or config_lib.default_preset_name(cuda_available, dataset)
    cfg = config_lib.preset(name)
    return config_lib.apply_overrides(cfg, list(STUDY_OVERRIDES.get(name, ())))


@dataclass
class RunSpec:
    variant: Variant
    seed: int
    config: TrainConfig
    run_dir: Path

    @property
    def label(self) -> str:
        return f"{self.variant.name} (seed {self.seed})"


@dataclass
class Study:
    out: Path
    base: TrainConfig
    variants: list[Variant]
    seeds: list[int]
    only: Optional[list[str]] = None
    runs: list[RunSpec] = field(default_factory=list)

    def settings(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "base": config_lib.to_dict(self.base),
                "variants": [{"name": v.name, "overrides": list(v.overrides)} for v in self.variants],
                "seeds": list(self.seeds)}

    def selected(self) -> list[RunSpec]:
        return [run for run in self.runs if self.only is None or run.variant.name in self.only]


def make_study(
    out: Optional[str | os.PathLike] = None,
    preset: Optional[str] = None,
    variants: Optional[list[str]] = None,
    only: Optional[list[str]] = None,
    seeds: int = 1,
    sets: Optional[list[str]] = None,
    max_steps: Optional[int] = None,
    max_minutes: Optional[float] = None,
    dataset: Optional[str] = None,
    data_dir: Optional[str] = None,
    device: Optional[str] = None,
    backend: Optional[str] = None,
    cuda_available: Optional[bool] = None,
    seed: Optional[int] = None,
) -> Study:
    """A study from `trm-fast ablate`'s arguments: the base config (study_base_config, then dataset /
    data_dir / device / backend / seed, `sets`, then the per-variant budget, which follows the rule of
    trm_fast.budget as `train` does), the variants (the tutorial's four, or the paper's Sudoku
    ablations for Sudoku data, unless `variants` are given) and K seeds (base seed, +1, ...)."""
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if seeds < 1:
        raise StudyError(f"--seeds must be >= 1, got {seeds}")
    kind = dataset
    if dataset is not None and dataset not in config_lib.BUILTIN_DATASETS:
        from trm_fast.train.data import folder_kind

        kind = folder_kind(dataset)
    base = study_base_config(preset, cuda_available, kind)
    if dataset is not None:
        base.dataset = dataset
    if data_dir is not None:
        base.data_dir = data_dir
    if device is not None:
        base.device = device
    if backend is not None:
        base.backend = backend
    if seed is not None:
        base.seed = seed
    config_lib.apply_overrides(base, list(sets or []))
    budget_lib.apply_budget(base, max_steps, max_minutes)
    config_lib.validate(base)

    builtins = builtin_variants("sudoku" if base.dataset == "sudoku" or kind == "sudoku" else None)
    chosen = [parse_variant(text, builtins) for text in variants] if variants else list(builtins)
    names = [v.name for v in chosen]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise StudyError(f"variant {duplicates[0]!r} is given twice")
    if only is not None:
        only = [name.strip() for name in only if name.strip()]
        unknown = [name for name in only if name not in names]
        if unknown or not only:
            raise StudyError(f"--only: unknown variant {unknown[0] if unknown else ''!r} (variants: {', '.join(names)})")
    out = Path(out) if out is not None else Path("runs") / f"ablation-{base.preset or 'study'}"
    study = Study(out=out, base=base, variants=chosen, seeds=[base.seed + k for k in range(seeds)], only=only)
    for variant in chosen:
        try:
            variant_cfg = config_lib.apply_overrides(copy.deepcopy(base), list(variant.overrides))
        except ConfigError as error:
            raise StudyError(f"variant {variant.name}: {error}") from None
        for k in range(seeds):
            cfg = copy.deepcopy(variant_cfg)
            cfg.seed = variant_cfg.seed + k
            study.runs.append(RunSpec(variant, cfg.seed, cfg, out / f"{variant.name}-seed{cfg.seed}"))
    return study


def _normalised_config(values: dict, where: str) -> dict:
    try:
        return config_lib.to_dict(config_lib.from_dict(values))
    except ConfigError as error:
        raise StudyError(f"{where}: {error}") from None


def _first_difference(old, new, path: str = "") -> Optional[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            found = _first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    if old != new:
        return f"{path}: {json.dumps(old)} there, {json.dumps(new)} now"
    return None


def check_study_dir(study: Study) -> None:
    """Write study.json into a new study directory, or check that an existing one has these settings."""
    path = study.out / STUDY_FILE
    settings = study.settings()
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise StudyError(f"{path}: cannot read ({error})") from None
        if not isinstance(saved, dict) or saved.get("format") != FORMAT:
            raise StudyError(f"{path}: not a trm-fast study file")
        saved = dict(saved, base=_normalised_config(saved.get("base", {}), str(path)))
        difference = _first_difference({k: saved.get(k) for k in ("base", "variants", "seeds")},
                                       {k: settings[k] for k in ("base", "variants", "seeds")})
        if difference:
            raise StudyError(f"{study.out} holds a study with other settings ({difference}); "
                             "rerun it with its own arguments or choose another --out")
        return
    if study.out.exists() and any(study.out.iterdir()):
        raise StudyError(f"{study.out} exists and is not a study directory (no {STUDY_FILE}); choose another --out")
    study.out.mkdir(parents=True, exist_ok=True)
    _write_json(path, settings)


def _write_json(path: Path, values) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(values, indent=2) + "\n")
    os.replace(temporary, path)


# ----------------------------------------------------------------------------------------------
# Reading a run directory


@dataclass
class RunRecords:
    """The records of one run directory, as the trainer wrote them, with a resumed run's repeated
    records resolved (the later ones win)."""

    run_dir: Path
    train: list[dict]  # records with train/* keys, by step
    evals: list[dict]  # periodic held-out evaluations (eval/*), by step
    final: Optional[dict]  # the final held-out evaluation (test/*), when the run finished
    train_seconds: float  # training wall time summed over the run's invocations
    config: Optional[dict]

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def finished(self) -> bool:
        return (self.run_dir / "final_eval.json").is_file()


def _record_kind(record: dict) -> Optional[str]:
    if record.get("final"):
        return "final"
    if "train/lm_loss" in record:
        return "train"
    if "eval/exact_accuracy" in record:
        return "eval"
    return None


def load_run(run_dir: str | os.PathLike) -> RunRecords:
    """Read `run_dir/metrics.jsonl`. A resumed run repeats the steps after its checkpoint: a record at
    a step already seen (or before the newest one) starts a new invocation, which replaces the
    records from that step on. Training time is summed over invocations (elapsed_s restarts)."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise StudyError(f"{run_dir}: no metrics.jsonl (not a trm-fast run directory?)")
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise StudyError(f"{path}: cannot read ({error})") from None
    kept: list[tuple[str, dict]] = []
    seen: set[tuple[str, int]] = set()
    newest = -1
    segments: list[float] = []
    last_elapsed = None
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:  # cut short by a killed process (a resumed run appends right after it)
            continue
        kind = _record_kind(record) if isinstance(record, dict) else None
        if kind is None or not isinstance(record.get("step"), int):
            continue
        step = record["step"]
        if kind == "final":
            kept = [(k, r) for k, r in kept if k != "final"]
        elif step < newest or (kind, step) in seen:  # a resumed invocation repeats this step
            kept = [(k, r) for k, r in kept if k != "final" and r["step"] < step]
            seen = {(k, r["step"]) for k, r in kept}
            newest = max((r["step"] for k, r in kept), default=-1)
        if kind != "final":
            seen.add((kind, step))
            newest = max(newest, step)
        kept.append((kind, record))
        if kind == "train" and isinstance(record.get("elapsed_s"), (int, float)):
            elapsed = float(record["elapsed_s"])
            if last_elapsed is None or elapsed < last_elapsed:
                segments.append(elapsed)
            else:
                segments[-1] = elapsed
            last_elapsed = elapsed
    train = sorted((r for k, r in kept if k == "train"), key=lambda r: r["step"])
    if not train:
        raise StudyError(f"{path}: no training records yet")
    evals = sorted((r for k, r in kept if k == "eval"), key=lambda r: r["step"])
    final = next((r for k, r in kept if k == "final"), None)
    config = None
    if (run_dir / "config.json").is_file():
        try:
            config = json.loads((run_dir / "config.json").read_text())
        except (OSError, ValueError):
            config = None
    return RunRecords(run_dir, train, evals, final, sum(segments), config)


def load_runs(paths) -> list[RunRecords]:
    """load_run of each path; a study directory (study.json, no metrics.jsonl) stands for its runs."""
    runs = []
    for path in map(Path, paths):
        if (path / STUDY_FILE).is_file() and not (path / "metrics.jsonl").is_file():
            inside = sorted(d for d in path.iterdir() if (d / "metrics.jsonl").is_file())
            if not inside:
                raise StudyError(f"{path}: a study directory without runs yet")
            runs += [load_run(d) for d in inside]
        else:
            runs.append(load_run(path))
    return runs


def summarise_run(records: RunRecords) -> dict:
    """Every figure of one run: the tutorial's loss columns, held-out accuracy, and the curves."""
    train, final = records.train, records.final
    losses = [r["train/lm_loss"] for r in train]
    initial, last = losses[0], losses[-1]
    steps = train[-1]["step"] if final is None else final["step"]
    summary = {
        "run_dir": records.name,
        "finished": records.finished,
        "steps": steps,
        "initial_loss": initial,  # the first logged LM loss (mean over the first log_interval steps)
        "final_loss": last,  # the last logged LM loss
        "improvement": (initial - last) / initial if initial else 0.0,
        "min_loss": min(losses),
        "train_exact": train[-1].get("train/exact_accuracy"),
        "train_q_halt": train[-1].get("train/q_halt_accuracy"),
        "mean_steps": train[-1].get("train/steps"),  # supervision steps used by the halted sequences
        "train_seconds": records.train_seconds,
        "steps_per_second": steps / records.train_seconds if records.train_seconds > 0 else None,
        "heldout_exact": final.get("test/exact_accuracy") if final else None,
        "heldout_token": final.get("test/accuracy") if final else None,
        "heldout_q_halt": final.get("test/q_halt_accuracy") if final else None,
        "heldout_lm_loss": final.get("test/lm_loss") if final else None,
        "heldout_examples": final.get("test/count") if final else None,
        "curves": {
            "step": [r["step"] for r in train],
            "lm_loss": losses,
            "loss": [r.get("train/loss") for r in train],
            "exact_accuracy": [r.get("train/exact_accuracy") for r in train],
            "q_halt_accuracy": [r.get("train/q_halt_accuracy") for r in train],
            "steps": [r.get("train/steps") for r in train],
            "lr": [r.get("train/lr") for r in train],
            "steps_per_second": [r.get("steps_per_second") for r in train],
        },
        # Held-out exact/token accuracy against step: the periodic evaluations (eval_examples test
        # examples each) and, last, the final evaluation on the whole test split.
        "heldout_curve": {
            "step": [r["step"] for r in records.evals] + ([final["step"]] if final else []),
            "exact_accuracy": [r["eval/exact_accuracy"] for r in records.evals] + ([final["test/exact_accuracy"]] if final else []),
            "accuracy": [r.get("eval/accuracy") for r in records.evals] + ([final.get("test/accuracy")] if final else []),
            "q_halt_accuracy": [r.get("eval/q_halt_accuracy") for r in records.evals] + ([final.get("test/q_halt_accuracy")] if final else []),
            "examples": [r.get("eval/count") for r in records.evals] + ([final.get("test/count")] if final else []),
        },
    }
    return summary


SCALARS = ("initial_loss", "final_loss", "improvement", "min_loss", "heldout_exact", "heldout_token",
           "heldout_q_halt", "heldout_lm_loss", "train_exact", "train_q_halt", "mean_steps", "train_seconds",
           "steps_per_second", "steps")


def mean_and_std(values: list) -> tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation (0 for one value) of the values that are not None."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return None, None
    return statistics.fmean(present), (statistics.stdev(present) if len(present) > 1 else 0.0)


# ----------------------------------------------------------------------------------------------
# Model size and cost of a variant


def variant_costs(cfg: TrainConfig) -> dict:
    """Trainable parameters (as the trainer counts them) and model FLOPs per supervision step
    (trm_fast.flops) of a config on its data."""
    from trm_fast import flops
    from trm_fast.data import load_split
    from trm_fast.memory import parameter_count
    from trm_fast.train.data import prepare_dataset
    from trm_fast.train.distributed import DistContext

    folder = prepare_dataset(cfg, DistContext())  # the built-in mazes are a cache: rebuilt if removed
    metadata = load_split(folder, "train", check_values=False).metadata
    model_config = config_lib.model_config(cfg, metadata.vocab_size, metadata.seq_len, metadata.num_puzzle_identifiers)
    return {
        "parameters": parameter_count(model_config),
        "train_flops_per_step": flops.train_step_flops(model_config, cfg.global_batch_size),
        "train_flops_per_example_step": flops.train_step_flops(model_config, 1),
        "eval_flops_per_example_step": flops.eval_step_flops(model_config, 1),
        "seq_len": metadata.seq_len,
    }


# ----------------------------------------------------------------------------------------------
# Running


@dataclass
class StudyResult:
    study: Study
    outputs: dict  # {"png"|"md"|"json": Path}, empty when nothing finished yet
    report: Optional[dict]
    interrupted: bool = False
    trained: list[str] = field(default_factory=list)  # run directories trained (or resumed) now


def run_state(run: RunSpec) -> str:
    """"finished" (final_eval.json), "resume" (a checkpoint) or "new"."""
    from trm_fast.train.checkpoint import latest_checkpoint

    if (run.run_dir / "final_eval.json").is_file():
        return "finished"
    return "resume" if latest_checkpoint(run.run_dir) is not None else "new"


def _check_run_config(run: RunSpec) -> None:
    """A run directory must have been made for this run (same config, but for the per-invocation
    max_minutes and, in a run that fills its minutes, the measured max_steps)."""
    path = run.run_dir / "config.json"
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise StudyError(f"{path}: cannot read ({error})") from None
    saved = _normalised_config(saved, str(path))
    wanted = config_lib.to_dict(run.config)
    for name in ("max_minutes", "max_steps") if budget_lib.fills_time(run.config) else ("max_minutes",):
        saved.pop(name, None)
        wanted.pop(name, None)
    difference = _first_difference(saved, wanted)
    if difference:
        raise StudyError(f"{run.run_dir} was trained with another config ({difference}); remove it to retrain")


def _invocation_config(run: RunSpec, state: str) -> TrainConfig:
    """The config of this invocation: with a time budget, a resumed run gets what is left of it, and
    keeps the schedule length it measured (saved in its config.json)."""
    cfg = copy.deepcopy(run.config)
    if state == "resume" and budget_lib.fills_time(cfg) and (run.run_dir / "config.json").is_file():
        cfg.max_steps = config_lib.load_json(run.run_dir / "config.json").max_steps
    if state == "resume" and cfg.max_minutes is not None and (run.run_dir / "metrics.jsonl").is_file():
        try:
            spent = load_run(run.run_dir).train_seconds / 60
        except StudyError:
            spent = 0.0
        cfg.max_minutes = max(cfg.max_minutes - spent, 1e-3)
    return cfg


def _prefixed(prefix: str, log: Callable[[str], None]) -> Callable[[str], None]:
    return lambda line: log(f"{prefix}{line}")


def _train_in_process(run: RunSpec, cfg: TrainConfig, resume: bool, progress: bool, log) -> str:
    from trm_fast.train.loop import train

    result = train(cfg, run.run_dir, resume=resume, progress=progress, log=_prefixed(f"[{run.run_dir.name}] ", log))
    return result.stopped_by


def _worker(cfg_values: dict, run_dir: str, resume: bool, prefix: str, connection) -> None:
    """One run in a child process (--jobs > 1). Its own process group: the study forwards Ctrl-C
    once, so the trainer checkpoints and stops instead of being interrupted twice."""
    try:
        os.setpgrp()
    except OSError:
        pass
    outcome = ("error", "did not start")
    try:
        from trm_fast.train.loop import train

        cfg = config_lib.from_dict(cfg_values)

        def log(line: str) -> None:
            print(prefix + line, flush=True)

        result = train(cfg, run_dir, resume=resume, progress=False, log=log)
        outcome = ("interrupt" if result.stopped_by == "interrupt" else "done", result.stopped_by)
    except KeyboardInterrupt:
        outcome = ("interrupt", "interrupted")
    except Exception as error:  # noqa: BLE001 - reported by the parent as one line
        from trm_fast.errors import user_errors

        if not isinstance(error, user_errors()):
            import traceback

            traceback.print_exc()
        outcome = ("error", " ".join(str(error).split()) or type(error).__name__)
    finally:
        try:
            connection.send(outcome)
        finally:
            connection.close()


def _status_line(run: RunSpec) -> Optional[str]:
    """The newest training record of a running run, for the parent's periodic status lines."""
    path = run.run_dir / "metrics.jsonl"
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(handle.tell() - 8192, 0))
            lines = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if "train/lm_loss" in record:
            return (f"[{run.run_dir.name}] step {record['step']}/{run.config.max_steps or '?'} "
                    f"lm_loss {record['train/lm_loss']:.4f} exact {record.get('train/exact_accuracy', 0):.3f} "
                    f"({record.get('steps_per_second', 0):.2f} steps/s)")
    return None


def _train_in_processes(plan: list[tuple[RunSpec, TrainConfig, bool]], jobs: int, log, status_every: float) -> bool:
    """Train the planned runs, `jobs` at a time, each in a spawned process. Returns True when
    interrupted (Ctrl-C: forwarded once to every running run, which checkpoints and stops)."""
    import multiprocessing
    import signal

    context = multiprocessing.get_context("spawn")
    pending = list(plan)
    running: dict = {}  # process -> (run, receiving end)
    interrupted = False
    failure: Optional[str] = None
    last_status = time.monotonic()

    def stop_all() -> None:
        for process in running:
            if process.is_alive():
                try:
                    os.kill(process.pid, signal.SIGINT)
                except OSError:
                    pass

    while pending or running:
        try:
            while pending and len(running) < jobs and not interrupted and failure is None:
                run, cfg, resume = pending.pop(0)
                receiver, sender = context.Pipe(duplex=False)
                process = context.Process(
                    target=_worker, name=f"trm-fast-{run.run_dir.name}",
                    args=(config_lib.to_dict(cfg), str(run.run_dir), resume, f"[{run.run_dir.name}] ", sender))
                process.start()
                sender.close()
                running[process] = (run, receiver)
            for process in [p for p in running if not p.is_alive()]:
                process.join()
                run, receiver = running.pop(process)
                outcome = receiver.recv() if receiver.poll() else ("error", f"exited with status {process.exitcode}")
                receiver.close()
                if outcome[0] == "interrupt":
                    interrupted = True
                elif outcome[0] == "error" and failure is None:
                    failure = f"{run.run_dir.name}: {outcome[1]}"
                    stop_all()
            if status_every and time.monotonic() - last_status > status_every and running:
                last_status = time.monotonic()
                for run, _receiver in running.values():
                    line = _status_line(run)
                    if line:
                        log(line)
            time.sleep(0.2)
        except KeyboardInterrupt:
            if not interrupted:
                log("interrupted: the running runs save a checkpoint and stop (run the same command again to resume)")
            interrupted = True
            stop_all()
    if failure is not None:
        raise StudyError(failure)
    return interrupted


def run_study(
    study: Study,
    jobs: Optional[int] = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    status_every: float = 60.0,
    command: Optional[str] = None,
) -> StudyResult:
    """Train every selected run that has not finished (resuming those with a checkpoint), then write
    ablation.{json,md,png} over all finished runs of the study."""
    from trm_fast.train.data import dataset_dir, prepare_dataset
    from trm_fast.train.distributed import DistContext

    jobs = 1 if jobs is None else jobs
    if jobs < 1:
        raise StudyError(f"--jobs must be >= 1, got {jobs}")
    check_study_dir(study)
    budget = budget_lib.describe(study.base)
    log(f"study {study.out}: {len(study.variants)} variant(s) x {len(study.seeds)} seed(s), {budget} per run, "
        f"base preset {study.base.preset or '-'}")
    plan = []
    for run in study.runs:
        state = run_state(run)
        selected = run in study.selected()
        _check_run_config(run)
        what = {"finished": "finished, reused", "resume": "resumes from its checkpoint", "new": "to train"}[state]
        if not selected and state != "finished":
            what = "skipped (--only)"
        log(f"  {run.run_dir.name:<24} {', '.join(run.variant.overrides) or '(base config)'}: {what}")
        if selected and state != "finished":
            plan.append((run, _invocation_config(run, state), state == "resume"))

    for folder, cfg in {str(dataset_dir(cfg)): cfg for _run, cfg, _resume in plan}.items():
        prepare_dataset(cfg, DistContext())  # built once here, not by concurrent runs

    interrupted = False
    trained = [run.run_dir.name for run, _cfg, _resume in plan]
    if plan and jobs > 1 and len(plan) > 1:
        # Longest first, so the short runs fill in at the end.
        order = sorted(plan, key=lambda item: -_cost_estimate(item[0].config))
        log(f"training {len(plan)} run(s), {min(jobs, len(plan))} at a time (one process each; logs prefixed by run)")
        interrupted = _train_in_processes(order, jobs, log, status_every)
    else:
        for index, (run, cfg, resume) in enumerate(plan, 1):
            log(f"== {index}/{len(plan)} {run.run_dir.name}: {', '.join(run.variant.overrides) or '(base config)'}")
            if _train_in_process(run, cfg, resume, progress, log) == "interrupt":
                interrupted = True
                break
    if interrupted:
        log(f"interrupted: run the same command again to resume ({study.out})")
    report = build_report(study)
    outputs = write_outputs(study, report, command) if report["variants"] else {}
    return StudyResult(study, outputs, report, interrupted, trained)


def _cost_estimate(cfg: TrainConfig) -> float:
    model = cfg.model
    calls = model.h_cycles - 1 + 3  # gradient-free cycles forward, the last one forward + backward
    return (cfg.max_steps or 1) * model.num_layers * (model.l_cycles + 1) * calls * cfg.global_batch_size


# ----------------------------------------------------------------------------------------------
# Report


def _format_value(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def differing_fields(study: Study) -> list[str]:
    """Config fields (dotted) whose value differs between the study's variants (seed excluded)."""
    def flat(values: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in values.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[prefix + key] = value
        return out

    first_of_variant = {}
    for run in study.runs:
        first_of_variant.setdefault(run.variant.name, flat(config_lib.to_dict(run.config)))
    configs = list(first_of_variant.values())
    fields = [key for key in configs[0] if key != "seed" and len({json.dumps(c.get(key)) for c in configs}) > 1]
    order = list(SHORT_NAMES)
    return sorted(fields, key=lambda key: (order.index(key) if key in order else len(order), fields.index(key)))


def variant_label(values: dict) -> str:
    """"layers=2, T=3, n=6, EMA on" from {field: value}."""
    parts = []
    for key, value in values.items():
        short = SHORT_NAMES.get(key, key)
        parts.append(f"{short} {_format_value(value)}" if isinstance(value, bool) else f"{short}={value}")
    return ", ".join(parts)


def build_report(study: Study) -> dict:
    """Every figure of the study's finished runs (ablation.json's content)."""
    fields = differing_fields(study) if len(study.variants) > 1 else []
    variants, not_finished = [], []
    for variant in study.variants:
        runs = [run for run in study.runs if run.variant.name == variant.name]
        finished = [run for run in runs if (run.run_dir / "final_eval.json").is_file()]
        not_finished += [run.run_dir.name for run in runs if run not in finished]
        if not finished:
            continue
        summaries = []
        for run in finished:
            summary = summarise_run(load_run(run.run_dir))
            summary["seed"] = run.seed
            summaries.append(summary)
        config_values = {key: config_lib.get_field(finished[0].config, key) for key in fields}
        costs = variant_costs(finished[0].config)
        aggregate = {key: mean_and_std([s[key] for s in summaries]) for key in SCALARS}
        variants.append({
            "name": variant.name,
            "overrides": list(variant.overrides),
            "config": config_values,
            "label": variant_label(config_values),
            **costs,
            "mean": {key: value[0] for key, value in aggregate.items()},
            "std": {key: value[1] for key, value in aggregate.items()},
            "runs": summaries,
        })
    base = study.base
    return {
        "format": FORMAT,
        "version": VERSION,
        "settings": study.settings(),
        "budget": budget_lib.describe(base),
        "seeds": list(study.seeds),
        "differing_fields": fields,
        "held_out": held_out_text(base),
        "base_summary": base_summary(base),
        "variants": variants,
        "not_finished": not_finished,
    }


def base_summary(cfg: TrainConfig) -> str:
    model = cfg.model
    if cfg.dataset == "maze":
        maze = cfg.maze
        style = "corridor-style" if maze.style == "corridors" else f"random-wall ({maze.wall_share_min:g}-{maze.wall_share_max:g})"
        data = (f"{maze.size}x{maze.size} {style} mazes ({maze.num_train:,} train / {maze.num_test:,} test, "
                f"generator seed {maze.seed})")
    elif cfg.dataset == "sudoku":
        sudoku = cfg.sudoku
        data = (f"{sudoku.size}x{sudoku.size} Sudoku ({sudoku.num_train:,} train x {1 + sudoku.num_aug} with augmentation "
                f"/ {sudoku.num_test:,} test, min rating {sudoku.min_rating}, generator seed {sudoku.seed})")
    else:
        data = f"dataset {cfg.dataset}"
    schedule = (f"lr {cfg.lr:g} (warm-up {cfg.lr_warmup_steps}, cosine to {cfg.lr * cfg.lr_min_ratio:g})"
                if cfg.lr_min_ratio < 1 else f"lr {cfg.lr:g} (warm-up {cfg.lr_warmup_steps}, then constant)")
    return (f"preset {cfg.preset or '-'}: {data}; width {model.hidden_size}, {model.num_heads} heads, "
            f"at most {model.halt_max_steps} supervision steps; batch {cfg.global_batch_size}; {schedule}, "
            f"weight decay {cfg.weight_decay:g}, EMA rate {cfg.ema_rate:g} (where EMA is on); {budget_lib.describe(cfg)} per run; "
            f"{cfg.loss_type} loss; seed {cfg.seed}")


def held_out_text(cfg: TrainConfig) -> str:
    every = (f"every {cfg.eval_interval} steps on the first {cfg.eval_examples or 'all'} test examples, "
             if cfg.eval_interval else "")
    split = (f"the test split of the built-in maze data ({cfg.maze.num_test:,} mazes made by the same generator with "
             "the same seed on a separate stream; no training maze equals a test maze, not even up to the 8 "
             "symmetries)" if cfg.dataset == "maze" else
             f"the test split of the built-in Sudoku data ({cfg.sudoku.num_test:,} puzzles made by the same generator "
             "with the same seed on a separate stream; none equivalent to a training puzzle under the Sudoku "
             "symmetries)" if cfg.dataset == "sudoku" else f"the test split of {cfg.dataset}")
    return (f"{split}; evaluated {every}and at the end on all of it; all {cfg.model.halt_max_steps} supervision "
            "steps, EMA weights where EMA is on")


def _cell(mean, std, fmt: Callable[[float], str], seeds: int) -> str:
    if mean is None:
        return "-"
    return fmt(mean) if seeds <= 1 else f"{fmt(mean)} ± {fmt(std)}"


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


# (column header, key, formatter); parameters and FLOPs are per variant.
TABLE_COLUMNS = (
    ("initial loss", "initial_loss", lambda v: f"{v:.3f}"),
    ("final loss", "final_loss", lambda v: f"{v:.3f}"),
    ("improvement", "improvement", _percent),
    ("min loss", "min_loss", lambda v: f"{v:.3f}"),
    ("held-out exact", "heldout_exact", _percent),
    ("held-out token", "heldout_token", lambda v: f"{100 * v:.2f}%"),
    ("train exact", "train_exact", _percent),
    ("q-halt acc. (held-out)", "heldout_q_halt", _percent),
    ("mean steps", "mean_steps", lambda v: f"{v:.2f}"),
    ("train time", "train_seconds", _minutes),
    ("steps/s", "steps_per_second", lambda v: f"{v:.2f}"),
)


def markdown_table(report: dict) -> str:
    seeds = len(report["seeds"])
    fields = report["differing_fields"]
    header = ["variant"] + [SHORT_NAMES.get(key, key) for key in fields] + [c[0] for c in TABLE_COLUMNS] + \
        ["parameters", "GFLOP / step"]
    rows = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * (1 + len(fields)) + ["---:"] * (len(header) - 1 - len(fields))) + "|"]
    for variant in report["variants"]:
        cells = [variant["name"]] + [_format_value(variant["config"][key]) for key in fields]
        cells += [_cell(variant["mean"][key], variant["std"][key], fmt, seeds) for _h, key, fmt in TABLE_COLUMNS]
        cells += [f"{variant['parameters']:,}", f"{variant['train_flops_per_step'] / 1e9:.2f}"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def markdown_report(report: dict, command: Optional[str] = None) -> str:
    seeds = report["seeds"]
    lines = ["# Ablation study", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [
        f"Base: {report['base_summary']}.",
        "",
        f"Variants: " + "; ".join(f"**{v['name']}** `{', '.join(v['overrides']) or '(base)'}`" for v in report["variants"]) + ".",
        "",
        f"Held out: {report['held_out']}.",
        "",
        "![ablation](ablation.png)",
        "",
        markdown_table(report),
        "",
        "Columns: *initial loss* is the first logged training LM loss (mean over the first log interval), "
        "*final loss* the last, *improvement* = (initial - final) / initial, *min loss* the lowest logged; "
        "*held-out exact / token* are the final evaluation on the whole test split; *train exact*, *mean steps* "
        "(supervision steps of the sequences that halted) from the last training log; *train time* is the training "
        "wall clock (evaluations included, final evaluation excluded); *GFLOP / step* the model FLOPs of one "
        "training supervision step on the whole batch (trm_fast.flops).",
    ]
    if len(seeds) > 1:
        lines += ["", f"Mean ± sample standard deviation over {len(seeds)} seeds ({', '.join(map(str, seeds))})."]
    if report["not_finished"]:
        lines += ["", f"Not finished yet (not in the table): {', '.join(report['not_finished'])}."]
    return "\n".join(lines) + "\n"


def write_outputs(study: Study, report: dict, command: Optional[str] = None) -> dict:
    from trm_fast import plots

    out = study.out
    paths = {key: out / name for key, name in OUTPUT_NAMES.items()}
    command = command or "trm-fast ablate"
    _write_json(paths["json"], dict(report, command=command))
    temporary = paths["md"].with_name(paths["md"].name + ".tmp")
    temporary.write_text(markdown_report(report, command))
    os.replace(temporary, paths["md"])
    figure = plots.ablation_figure(report)
    plots.save_figure(figure, paths["png"])
    return paths

