"""Pictures: an ablation study's figure, any runs' training curves, a model solving a maze or a
Sudoku, and accuracy against supervision steps.

Every function returns a matplotlib `Figure` (object-oriented API on the Agg canvas: no pyplot, no
global backend switch, no display needed) and `save_figure` writes it:

    figure = ablation_figure(report)                 # report = trm_fast.study.build_report(study)
    figure = runs_figure([load_run(d) for d in run_dirs])
    figure = solve_figure(question, answers, q_halts, labels, vocab_size=6)
    figure = step_accuracy_figure(curve.steps, halting.metrics)   # trm-fast eval --image
    save_figure(figure, "out.png")
"""
from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogLocator, MaxNLocator, NullFormatter

from trm_fast.atomic import atomic_write
from trm_fast.config import ConfigError

# The tutorial's figure: blue solid baseline, red dashed no EMA, green dash-dot less recursion,
# magenta dotted bigger brain. Other variants take the next free colour and style.
TUTORIAL_STYLES = {
    "baseline": ("tab:blue", "-"),
    "no-ema": ("tab:red", "--"),
    "less-recursion": ("tab:green", "-."),
    "bigger-brain": ("m", ":"),
}
_COLOURS = ("tab:orange", "tab:purple", "tab:brown", "tab:cyan", "tab:olive", "tab:gray", "tab:pink", "black")
_LINESTYLES = ("-", "--", "-.", ":")


class PlotError(ConfigError):
    """A picture that cannot be made as asked (bad output path or input); one line."""


# Figures meant for the README are at most README_WIDTH inches at README_DPI: 800 pixels, the width
# GitHub shows them at, so they are not scaled down (and their text stays readable).
README_WIDTH = 8.0
README_DPI = 100


def new_figure(width: float, height: float, dpi: int = 110) -> Figure:
    figure = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


def check_image_path(path: str | os.PathLike) -> str:
    """The image format of `path` (its extension: png, pdf, svg, ...); PlotError when unknown."""
    path = Path(path)
    kind = path.suffix.lower().lstrip(".")
    supported = FigureCanvasAgg(Figure()).get_supported_filetypes()
    if kind not in supported:
        raise PlotError(f"{path}: unknown image type {path.suffix or '(no extension)'!r}; use one of "
                        + ", ".join("." + k for k in sorted(supported)))
    return kind


def save_figure(figure: Figure, path: str | os.PathLike) -> Path:
    """Write the figure; the format follows the file's extension (png, pdf, svg, ...)."""
    kind = check_image_path(path)
    return atomic_write(path, lambda stream: figure.savefig(stream, format=kind), binary=True)


def variant_styles(names: Sequence[str]) -> dict[str, tuple[str, str]]:
    """(colour, line style) per name: the tutorial's for its four variants, distinct ones otherwise."""
    styles, free = {}, 0
    used_colours = set()
    for name in names:
        if name in TUTORIAL_STYLES:
            styles[name] = TUTORIAL_STYLES[name]
            used_colours.add(TUTORIAL_STYLES[name][0])
    for name in names:
        if name in styles:
            continue
        colours = [c for c in _COLOURS if c not in used_colours] or list(_COLOURS)
        styles[name] = (colours[free % len(colours)], _LINESTYLES[free % len(_LINESTYLES)])
        free += 1
    return styles


def _mean_curve(runs: list[dict], curve: str, key: str) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """(steps, mean, std or None) of `runs[i][curve][key]` over the steps every run has."""
    tables = []
    for run in runs:
        table = {s: v for s, v in zip(run[curve]["step"], run[curve][key]) if v is not None}
        tables.append(table)
    steps = sorted(set.intersection(*(set(t) for t in tables))) if tables else []
    values = np.array([[t[s] for s in steps] for t in tables], dtype=float).reshape(len(tables), len(steps))
    mean = values.mean(axis=0) if len(steps) else np.zeros(0)
    std = values.std(axis=0, ddof=1) if len(tables) > 1 and len(steps) else None
    return np.asarray(steps, dtype=float), mean, std


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def ablation_figure(report: dict) -> Figure:
    """Panel 1: training LM loss against step (the tutorial's figure); panel 2: held-out exact
    accuracy against step. One line per variant per panel (the mean over seeds, with a +-1 standard
    deviation band when there are several), README_WIDTH wide, the legend below, the training data
    in the title. No curve hides another: each variant is drawn thinner than the one before it
    (earlier ones show around later ones), with its own marker, and a loss curve equal to an
    earlier one's (EMA does not change the training loss) is drawn thin on top of it and says so in
    the legend."""
    from trm_fast import config as config_lib
    from trm_fast.study import data_summary

    variants = report["variants"]
    styles = variant_styles([v["name"] for v in variants])
    plots_inches, legend_inches = 4.2, 0.2 + 0.17 * len(variants)  # the panels with titles; the legend below
    figure = new_figure(README_WIDTH, plots_inches + legend_inches, dpi=README_DPI)
    loss_axes, exact_axes = figure.subplots(1, 2)
    highest = 0.0
    earlier_losses: list[tuple[str, np.ndarray, np.ndarray]] = []  # (name, steps, mean loss)
    widths = np.linspace(3.2, 1.6, len(variants)) if len(variants) > 1 else [2.0]
    for order, variant in enumerate(variants):
        colour, linestyle = styles[variant["name"]]
        label = f"{variant['name']} ({variant['label']})" if variant.get("label") else variant["name"]
        steps, loss, _ = _mean_curve(variant["runs"], "curves", "lm_loss")
        same = next((name for name, earlier_steps, earlier_loss in earlier_losses
                     if len(loss) and np.array_equal(earlier_steps, steps) and np.allclose(earlier_loss, loss)), None)
        earlier_losses.append((variant["name"], steps, loss))
        if same is not None:
            label += f"; training loss = {same}'s"
        for axes, curve, key, scale in ((loss_axes, "curves", "lm_loss", 1.0),
                                        (exact_axes, "heldout_curve", "exact_accuracy", 100.0)):
            steps, mean, std = _mean_curve(variant["runs"], curve, key)
            width = 1.2 if axes is loss_axes and same is not None else widths[order]
            marker = dict(marker=_MARKERS[order % len(_MARKERS)], markersize=2.5 + 1.5 * width,
                          markeredgewidth=0) if curve == "heldout_curve" else {}
            axes.plot(steps, mean * scale, color=colour, linestyle=linestyle, linewidth=width, zorder=2 + order,
                      label=label, **marker)
            if std is not None:
                axes.fill_between(steps, (mean - std) * scale, (mean + std) * scale, color=colour, alpha=0.15,
                                  linewidth=0)
            if axes is exact_axes and len(mean):
                highest = max(highest, float(np.max(mean + (std if std is not None else 0.0))) * scale)
    seeds = len(report.get("seeds", [0]))
    band = f"; mean of {seeds} seeds, band +-1 std" if seeds > 1 else ""
    loss_axes.set(xlabel="training step", ylabel="LM loss (training batches)", yscale="log", title="LM loss" + band)
    top = min(102.0, max(10.0, 1.15 * highest + 2))  # zoomed in while accuracies are low
    exact_axes.set(xlabel="training step", ylabel="held-out exact accuracy (%)", ylim=(-top / 40, top),
                   title="Held-out exact accuracy\n(last point: whole test split)")
    exact_axes.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 5, 10]))
    exact_axes.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    for axes in (loss_axes, exact_axes):
        axes.grid(True, which="both", alpha=0.3)
        axes.title.set_fontsize(10)
    _plain_log_labels(loss_axes)
    figure.legend(*loss_axes.get_legend_handles_labels(), loc="lower center", ncol=1, fontsize=8.5, frameon=False)
    base = report["settings"]["base"]
    data = data_summary(config_lib.from_dict(base))
    figure.suptitle(f"TRM ablation: {report.get('budget', '')} per variant ({base.get('preset') or 'custom'} base)\n"
                    f"trained on {data}", fontsize=10)
    figure.tight_layout(rect=(0, legend_inches / (plots_inches + legend_inches), 1, 1))
    return figure


def runs_figure(runs: Sequence) -> Figure:
    """Training curves of run directories (trm_fast.study.RunRecords): LM loss, exact accuracy
    (training solid, held-out dashed with markers, ARC's voted pass@2 dotted) and learning rate
    against step."""
    styles = variant_styles([f"run{i}" for i in range(len(runs))])
    figure = new_figure(15, 4.6)
    loss_axes, exact_axes, lr_axes = figure.subplots(1, 3)
    names = _unique_names([run.run_dir for run in runs])
    any_voted = False
    for index, (run, name) in enumerate(zip(runs, names)):
        colour = styles[f"run{index}"][0]
        steps = [r["step"] for r in run.train]
        loss_axes.plot(steps, [r.get("train/lm_loss") for r in run.train], color=colour, label=name)
        exact_axes.plot(steps, [100 * r.get("train/exact_accuracy", 0.0) for r in run.train], color=colour,
                        label=f"{name} (training)")
        held = [(r["step"], r["eval/exact_accuracy"]) for r in run.evals]
        if run.final is not None:
            held.append((run.final["step"], run.final["test/exact_accuracy"]))
        if held:
            exact_axes.plot([s for s, _ in held], [100 * v for _, v in held], color=colour, linestyle="--",
                            marker="o", markersize=4, label=f"{name} (held-out)")
        voted = [(r["step"], r["eval/pass@2"]) for r in run.evals if "eval/pass@2" in r]
        if run.final is not None and "test/pass@2" in run.final:
            voted.append((run.final["step"], run.final["test/pass@2"]))
        if voted:  # ARC: the figure that counts is voted over a task's augmentations
            exact_axes.plot([s for s, _ in voted], [100 * v for _, v in voted], color=colour, linestyle=":",
                            marker="s", markersize=4, label=f"{name} (held-out pass@2, voted)")
            any_voted = True
        lr_axes.plot(steps, [r.get("train/lr") for r in run.train], color=colour, label=name)
    loss_axes.set(xlabel="training step", ylabel="LM loss", yscale="log", title="LM loss (training)")
    exact_axes.set(xlabel="training step", ylabel="exact accuracy (%)", ylim=(-2, 102),
                   title="Exact accuracy (solid: training, dashed: held-out"
                         + ("; dotted: ARC pass@2)" if any_voted else ")"))
    if any_voted:
        exact_axes.legend(fontsize=8)
    lr_axes.set(xlabel="training step", ylabel="learning rate", title="Learning rate")
    for axes in (loss_axes, exact_axes, lr_axes):
        axes.grid(True, which="both", alpha=0.3)
    _plain_log_labels(loss_axes)
    loss_axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _plain_log_labels(axes) -> None:
    """Log-scale y ticks as plain numbers (0.2, 0.5, 1, 2) rather than powers of ten, few enough to
    read: steps of 1-2-5 over about a decade, 1-3 over a few, powers of ten beyond."""
    low, high = axes.get_ylim()
    decades = math.log10(high / low) if low > 0 else math.inf
    subs = (1.0, 2.0, 5.0) if decades <= 1.5 else (1.0, 3.0) if decades <= 3 else (1.0,)
    axes.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
    axes.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    axes.yaxis.set_minor_formatter(NullFormatter())


def _unique_names(paths: Sequence[Path]) -> list[str]:
    names = [Path(p).name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [str(p) for p in paths]


# ----------------------------------------------------------------------------------------------
# A model solving one example


# Maze tokens (trm_fast.data.maze): PAD 0, wall 1, open 2, S 3, G 4, path 5.
MAZE_COLOURS = ("#d9d9d9", "#2b2b2b", "#ffffff", "#2ca02c", "#d62728", "#1f77b4")
MAZE_NAMES = ("pad", "wall", "open", "S (start)", "G (goal)", "path")


def _grid_shape(length: int) -> tuple[int, int]:
    side = math.isqrt(length)
    if side * side == length:
        return side, side
    width = math.ceil(math.sqrt(length))
    return math.ceil(length / width), width


def _as_grid(tokens, shape: tuple[int, int], fill: int) -> np.ndarray:
    flat = np.full(shape[0] * shape[1], fill, dtype=np.int64)
    tokens = np.asarray(tokens).reshape(-1)
    flat[: tokens.size] = tokens
    return flat.reshape(shape)


def solve_title(data_path: str | os.PathLike, index: int, checkpoint: str | os.PathLike) -> str:
    """A short title for solve_figure: "<data folder>/test, example 3 - <run>/step_00005000.pt",
    without the directories above the data folder and the run (a run directory: its newest
    checkpoint)."""
    from trm_fast.train.run_directory import latest_checkpoint

    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        checkpoint = latest_checkpoint(checkpoint) or checkpoint
    return f"{_short_name(Path(data_path))}, example {index} - {_short_name(checkpoint)}"


def _short_name(path: Path) -> str:
    """"folder/name": the name and the folder it is in (above a `checkpoints` folder, the run's)."""
    folder = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return f"{folder.name}/{path.name}" if folder.name else path.name


def solve_figure(
    question,
    answers: Sequence,
    q_halts: Sequence[float],
    labels,
    vocab_size: int,
    ignore_index: int = -100,
    title: Optional[str] = None,
    sudoku=None,
    kind: Optional[str] = None,
    shape=None,
) -> Figure:
    """The question, the model's answer after each supervision step, and the expected answer, as
    panels in rows at most README_WIDTH wide (a long run wraps into more rows). Mazes (vocabulary
    6 on a square grid) are drawn in colour (walls, open cells, S, G, path); Sudoku (`sudoku`: the
    grid's trm_fast.data.sudoku.Geometry) as digits in a grid with its boxes (givens black, the
    model's digits blue, wrong ones red on red); other data as a grid of token ids. Wrong cells are
    crossed out in red (Sudoku: shaded); each step's title gives its q_halt (the model halts at the
    first step with q_halt > 0: that panel is framed) and whether the answer is solved.
    `kind` (a name of trm_fast.puzzles.KINDS, with its `shape`) draws the panels as that kind does;
    `sudoku=geometry` is kind "sudoku"."""
    from trm_fast.data.maze import VOCAB_SIZE as MAZE_VOCAB_SIZE
    from trm_fast.puzzles import get_kind, kind_named

    question = np.asarray(question).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    grid_shape = _grid_shape(question.size)
    if sudoku is not None:
        kind, shape = "sudoku", sudoku
    elif get_kind(kind) is None:  # what the data layer guesses, less the kinds that need their shape
        kind = "maze" if vocab_size == MAZE_VOCAB_SIZE and grid_shape[0] == grid_shape[1] else "grid"
    painter = kind_named(kind)
    problem = painter.figure_problem(shape, question.size)
    if problem:
        raise PlotError(problem)
    labelled = labels != ignore_index
    expected = np.where(labelled, labels, question)
    panels = [("question", question, None)]
    halt_step = next((i for i, q in enumerate(q_halts) if q > 0), None)
    for index, (answer, q_halt) in enumerate(zip(answers, q_halts)):
        answer = np.asarray(answer).reshape(-1)
        wrong = labelled & (answer != labels)
        panels.append((index, answer, wrong))
    panels.append(("expected", expected, None))

    # As many columns as fit README_WIDTH at the grid's smallest readable panel, then balanced rows.
    gap = 0.12  # inches between panels
    fit = max(1, int(README_WIDTH // (max(1.1, max(grid_shape) * painter.panel_cell_inches(max(grid_shape))) + gap)))
    rows = math.ceil(len(panels) / min(fit, len(panels)))
    columns = math.ceil(len(panels) / rows)
    panel = min(2.0, README_WIDTH / columns - gap)  # inches; a short run is not blown up
    width = columns * (panel + gap)
    title_lines = textwrap.wrap(title, width=int(width * 13), break_on_hyphens=False) if title else []
    heading = 0.1 + 0.2 * len(title_lines)
    panel_titles, legend = 0.4, painter.legend_inches  # inches above each panel, below the panels
    height = heading + rows * (panel_titles + panel) + legend
    figure = new_figure(width, height, dpi=README_DPI)
    axes_grid = []
    for index in range(len(panels)):
        row, column = divmod(index, columns)
        bottom = height - heading - (row + 1) * (panel_titles + panel)
        axes_grid.append(figure.add_axes(((column * (panel + gap) + gap / 2) / width, bottom / height,
                                          panel / width, panel / height)))
    cell_points = panel * 72 / max(grid_shape)  # a grid cell's size in points
    for axes, (name, tokens, wrong) in zip(axes_grid, panels):
        painter.draw_panel(axes, tokens, question, wrong, shape, grid_shape, vocab_size)
        axes.set_xticks([])
        axes.set_yticks([])
        if wrong is None:
            axes.set_title(name, fontsize=9)
            continue
        wrong_grid = _as_grid(wrong.astype(np.int64), grid_shape, 0).astype(bool)
        rows_wrong, cols_wrong = np.nonzero(wrong_grid)
        if rows_wrong.size and painter.crosses_wrong_cells:
            axes.scatter(cols_wrong, rows_wrong, marker="x", s=(0.8 * cell_points) ** 2, color="red",
                         linewidths=min(1.5, max(0.6, cell_points / 6)), label="wrong")
        solved = not bool(wrong.any())
        count = int(wrong.sum())
        status = "solved" if solved else f"wrong ({count} cell{'' if count == 1 else 's'})"
        halts = " - halts" if name == halt_step else ""
        axes.set_title(f"step {name + 1}: q_halt {q_halts[name]:+.2f}\n{status}{halts}", fontsize=8,
                       color="darkgreen" if solved else "firebrick")
        if name == halt_step:
            for spine in axes.spines.values():
                spine.set_edgecolor("black")
                spine.set_linewidth(2.5)
    painter.draw_legend(figure)
    if title_lines:
        figure.suptitle("\n".join(title_lines), fontsize=9, y=1 - 0.06 / height, va="top")
    return figure


def _token_colours(vocab_size: int) -> np.ndarray:
    from matplotlib import colormaps

    base = colormaps["tab20"].colors
    return np.array([base[i % len(base)] for i in range(max(vocab_size, 1))])


def step_accuracy_figure(per_step: Sequence[dict], halting: Optional[dict] = None, title: Optional[str] = None) -> Figure:
    """Exact and token accuracy against supervision steps (`trm_fast.train.evaluate.StepCurve.steps`:
    one metrics dict per step). With `halting` (the metrics of an evaluation where each example
    stopped at its own Q-halt decision) its accuracies are marked at its mean number of steps."""
    steps = np.arange(1, len(per_step) + 1)
    figure = new_figure(6.4, 4.0)
    axes = figure.subplots()
    axes.plot(steps, [100 * m["exact_accuracy"] for m in per_step], "o-", color="tab:blue", label="exact (all steps run)")
    axes.plot(steps, [100 * m["accuracy"] for m in per_step], "s--", color="tab:orange", label="token (all steps run)")
    if halting is not None:
        mean_steps = halting["steps"]
        axes.plot([mean_steps], [100 * halting["exact_accuracy"]], "*", markersize=14, color="tab:blue",
                  markeredgecolor="black", label=f"exact, halting (mean {mean_steps:.2f} steps)")
        axes.plot([mean_steps], [100 * halting["accuracy"]], "*", markersize=14, color="tab:orange",
                  markeredgecolor="black", label="token, halting")
    axes.set_xlabel("supervision steps")
    axes.set_ylabel("accuracy (%)")
    axes.set_xticks(steps)
    axes.set_ylim(0, 101)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    if title:
        axes.set_title(title, fontsize=8)
    figure.tight_layout()
    return figure
