"""A study's report: every figure of its finished runs (read back from their metrics.jsonl), the
Markdown table, and the three outputs ablation.json, ablation.md and ablation.png."""
from __future__ import annotations

import json
import statistics
from typing import Callable, Optional

from trm_fast import config as config_lib
from trm_fast import flops
from trm_fast.config import TrainConfig
from trm_fast.data import load_split
from trm_fast.memory import parameter_count
from trm_fast.puzzles import get_kind
from trm_fast import budget as budget_lib
from trm_fast.study.spec import FORMAT, VERSION, Study, write_json, write_text
from trm_fast.train import run_directory
from trm_fast.train.data import prepare_dataset
from trm_fast.train.distributed import DistContext
from trm_fast.train.run_directory import RunRecords

OUTPUT_NAMES = {"png": "ablation.png", "md": "ablation.md", "json": "ablation.json"}

# Short names for the table and legend; the tutorial's notation (T = H_cycles, n = L_cycles).
SHORT_NAMES = {"model.num_layers": "layers", "model.h_cycles": "T", "model.l_cycles": "n", "ema": "EMA",
               "model.mlp_t": "MLP", "model.pos_encodings": "pos", "model.hidden_size": "width", "seed": "seed"}


# ----------------------------------------------------------------------------------------------
# One run's figures


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
        finished = [run for run in runs if run_directory.is_finished(run.run_dir)]
        not_finished += [run.run_dir.name for run in runs if run not in finished]
        if not finished:
            continue
        summaries = []
        for run in finished:
            summary = summarise_run(run_directory.load_run(run.run_dir))
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
    schedule = (f"lr {cfg.lr:g} (warm-up {cfg.lr_warmup_steps}, cosine to {cfg.lr * cfg.lr_min_ratio:g})"
                if cfg.lr_min_ratio < 1 else f"lr {cfg.lr:g} (warm-up {cfg.lr_warmup_steps}, then constant)")
    return (f"preset {cfg.preset or '-'}: {data_summary(cfg)}; width {model.hidden_size}, {model.num_heads} heads, "
            f"at most {model.halt_max_steps} supervision steps; batch {cfg.global_batch_size}; {schedule}, "
            f"weight decay {cfg.weight_decay:g}, EMA rate {cfg.ema_rate:g} (where EMA is on); {budget_lib.describe(cfg)} per run; "
            f"{cfg.loss_type} loss; seed {cfg.seed}")


def data_summary(cfg: TrainConfig) -> str:
    """What the runs train on, e.g. "6x6 corridor-style mazes (2,000 train / 500 test, generator seed 0)"."""
    kind = get_kind(cfg.dataset)
    return kind.study_data_summary(kind.settings(cfg)) if kind is not None else f"dataset {cfg.dataset}"


def held_out_text(cfg: TrainConfig) -> str:
    every = (f"every {cfg.eval_interval} steps on the first {cfg.eval_examples or 'all'} test examples, "
             if cfg.eval_interval else "")
    kind = get_kind(cfg.dataset)
    split = kind.study_held_out_text(kind.settings(cfg)) if kind is not None else f"the test split of {cfg.dataset}"
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
    write_json(paths["json"], dict(report, command=command))
    write_text(paths["md"], markdown_report(report, command))
    figure = plots.ablation_figure(report)
    plots.save_figure(figure, paths["png"])
    return paths

