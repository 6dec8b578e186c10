"""What a study is: its variants (overrides of one base config), seeds and run directories, and the
study directory's settings file (study.json) that a rerun must match."""
from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from trm_fast import budget as budget_lib
from trm_fast import config as config_lib
from trm_fast.atomic import atomic_write_json, atomic_write_text
from trm_fast.config import ConfigError, TrainConfig
from trm_fast.presets import STUDY_OVERRIDES, default_preset_name
from trm_fast.presets import preset as preset_config

FORMAT = "trm-fast-ablation"
VERSION = 1
STUDY_FILE = "study.json"


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
    """The study's default variants for a dataset kind: the kind's own (the paper's Sudoku ablations
    for "sudoku"), the tutorial's four otherwise."""
    from trm_fast.puzzles import get_kind

    kind = get_kind(dataset)
    return (kind.study_variants() if kind is not None else None) or DEFAULT_VARIANTS

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
    """A study from `trm-fast ablate`'s arguments: the base config (the preset, by default maze-paper /
    sudoku-paper with CUDA and maze-cpu / sudoku-cpu without by the dataset kind, with dataset /
    data_dir / device / backend / seed, then its STUDY_OVERRIDES, `sets` and the per-variant budget,
    which follows trm_fast.budget's rule as `train` does), the
    variants (the tutorial's four, or the paper's Sudoku ablations for Sudoku data, unless `variants`
    are given) and K seeds (base seed, +1, ...)."""
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if seeds < 1:
        raise StudyError(f"--seeds must be >= 1, got {seeds}")
    from trm_fast.puzzles import get_kind, kind_of_dataset

    data_kind = kind_of_dataset(dataset)
    kind = data_kind.name if data_kind is not None else None
    preset_name = preset or default_preset_name(cuda_available, kind)
    base = preset_config(preset_name)
    for field_name, value in (("dataset", dataset), ("data_dir", data_dir), ("device", device), ("backend", backend),
                              ("seed", seed)):
        if value is not None:
            setattr(base, field_name, value)
    budget = budget_lib.budget_overrides(max_steps, max_minutes)
    # One pass, validated once: the study's settings for this preset, then --set, then the budget.
    config_lib.apply_overrides(base, [*STUDY_OVERRIDES.get(preset_name, ()), *(sets or []), *budget])

    builtins = builtin_variants(base.dataset if get_kind(base.dataset) is not None else kind)
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


def normalised_config(values: dict, where: str) -> dict:
    try:
        return config_lib.to_dict(config_lib.from_dict(values))
    except ConfigError as error:
        raise StudyError(f"{where}: {error}") from None


def first_difference(old, new, path: str = "") -> Optional[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            found = first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else key)
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
        saved = dict(saved, base=normalised_config(saved.get("base", {}), str(path)))
        difference = first_difference({k: saved.get(k) for k in ("base", "variants", "seeds")},
                                       {k: settings[k] for k in ("base", "variants", "seeds")})
        if difference:
            raise StudyError(f"{study.out} holds a study with other settings ({difference}); "
                             "rerun it with its own arguments or choose another --out")
        return
    if study.out.exists() and any(study.out.iterdir()):
        raise StudyError(f"{study.out} exists and is not a study directory (no {STUDY_FILE}); choose another --out")
    study.out.mkdir(parents=True, exist_ok=True)
    write_json(path, settings)


def write_text(path: Path, text: str) -> None:
    """Written whole or not at all (trm_fast.atomic)."""
    atomic_write_text(path, text)


def write_json(path: Path, values) -> None:
    atomic_write_json(path, values)

