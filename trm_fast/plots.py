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
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FormatStrFormatter, NullFormatter

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


def new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=110)
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
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    figure.savefig(temporary, format=kind)
    os.replace(temporary, path)
    return path


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


def ablation_figure(report: dict) -> Figure:
    """Panel 1: training LM loss against step (the tutorial's figure); panel 2: held-out exact
    accuracy against step. One line per variant per panel (the mean over seeds, with a +-1 standard
    deviation band when there are several)."""
    variants = report["variants"]
    styles = variant_styles([v["name"] for v in variants])
    figure = new_figure(13, 4.8)
    loss_axes, exact_axes = figure.subplots(1, 2)
    highest = 0.0
    for variant in variants:
        colour, linestyle = styles[variant["name"]]
        label = f"{variant['name']} ({variant['label']})" if variant.get("label") else variant["name"]
        for axes, curve, key, scale in ((loss_axes, "curves", "lm_loss", 1.0),
                                        (exact_axes, "heldout_curve", "exact_accuracy", 100.0)):
            steps, mean, std = _mean_curve(variant["runs"], curve, key)
            marker = "o" if curve == "heldout_curve" else None
            axes.plot(steps, mean * scale, color=colour, linestyle=linestyle, linewidth=1.8, marker=marker,
                      markersize=4, label=label)
            if std is not None:
                axes.fill_between(steps, (mean - std) * scale, (mean + std) * scale, color=colour, alpha=0.18,
                                  linewidth=0)
            if axes is exact_axes and len(mean):
                highest = max(highest, float(np.max(mean + (std if std is not None else 0.0))) * scale)
    seeds = len(report.get("seeds", [0]))
    band = f"; mean of {seeds} seeds, band +-1 std" if seeds > 1 else ""
    loss_axes.set(xlabel="training step", ylabel="LM loss (training batches)", yscale="log",
                  title="LM loss" + band)
    top = min(102.0, max(10.0, 1.15 * highest + 2))  # zoomed in while accuracies are low
    exact_axes.set(xlabel="training step", ylabel="held-out exact accuracy (%)", ylim=(-top / 50, top),
                   title="Held-out exact accuracy (last point: whole test split)")
    for axes in (loss_axes, exact_axes):
        axes.grid(True, which="both", alpha=0.3)
    _plain_log_labels(loss_axes)
    loss_axes.legend(fontsize=8, loc="upper right")
    figure.suptitle(f"TRM ablation: {report.get('budget', '')} per variant ({report['settings']['base'].get('preset') or 'custom'} base)",
                    fontsize=11)
    figure.tight_layout()
    return figure


def runs_figure(runs: Sequence) -> Figure:
    """Training curves of run directories (trm_fast.study.RunRecords): LM loss, exact accuracy
    (training solid, held-out dashed with markers) and learning rate against step."""
    styles = variant_styles([f"run{i}" for i in range(len(runs))])
    figure = new_figure(15, 4.6)
    loss_axes, exact_axes, lr_axes = figure.subplots(1, 3)
    names = _unique_names([run.run_dir for run in runs])
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
        lr_axes.plot(steps, [r.get("train/lr") for r in run.train], color=colour, label=name)
    loss_axes.set(xlabel="training step", ylabel="LM loss", yscale="log", title="LM loss (training)")
    exact_axes.set(xlabel="training step", ylabel="exact accuracy (%)", ylim=(-2, 102),
                   title="Exact accuracy (solid: training, dashed: held-out)")
    lr_axes.set(xlabel="training step", ylabel="learning rate", title="Learning rate")
    for axes in (loss_axes, exact_axes, lr_axes):
        axes.grid(True, which="both", alpha=0.3)
    _plain_log_labels(loss_axes)
    loss_axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _plain_log_labels(axes) -> None:
    """Log-scale y ticks as plain numbers (0.05, 0.1, 0.5, 1) rather than powers of ten."""
    low, high = axes.get_ylim()
    axes.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
    narrow = low > 0 and high / low < 20  # few decades: label the minor ticks too
    axes.yaxis.set_minor_formatter(FormatStrFormatter("%.2g") if narrow else NullFormatter())


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


def solve_figure(
    question,
    answers: Sequence,
    q_halts: Sequence[float],
    labels,
    vocab_size: int,
    ignore_index: int = -100,
    title: Optional[str] = None,
    columns: int = 10,
    sudoku=None,
) -> Figure:
    """The question, the model's answer after each supervision step, and the expected answer, as a
    strip of panels. Mazes (vocabulary 6 on a square grid) are drawn in colour (walls, open cells, S,
    G, path); Sudoku (`sudoku`: the grid's trm_fast.data.sudoku.Geometry) as digits in a grid with
    its boxes (givens black, the model's digits blue, wrong ones red on red); other data as a grid of
    token ids. Wrong cells are crossed out in red (Sudoku: shaded); each step's title gives its q_halt
    (the model halts at the first step with q_halt > 0: that panel is framed) and whether the answer
    is solved."""
    from trm_fast.data.maze import VOCAB_SIZE as MAZE_VOCAB_SIZE

    question = np.asarray(question).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    shape = _grid_shape(question.size)
    if sudoku is not None and sudoku.cells != question.size:
        raise PlotError(f"a {sudoku} Sudoku has {sudoku.cells} cells, the question {question.size}")
    is_maze = sudoku is None and vocab_size == MAZE_VOCAB_SIZE and shape[0] == shape[1]
    labelled = labels != ignore_index
    expected = np.where(labelled, labels, question)
    panels = [("question", question, None)]
    halt_step = next((i for i, q in enumerate(q_halts) if q > 0), None)
    for index, (answer, q_halt) in enumerate(zip(answers, q_halts)):
        answer = np.asarray(answer).reshape(-1)
        wrong = labelled & (answer != labels)
        panels.append((index, answer, wrong))
    panels.append(("expected", expected, None))

    rows = math.ceil(len(panels) / max(1, columns))
    columns = math.ceil(len(panels) / rows)  # balanced rows of at most `columns` panels
    cell = 2.0 if max(shape) <= 12 else 2.8
    figure = new_figure(cell * columns + 0.2, (cell + 0.6) * rows + 0.8)
    axes_grid = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).reshape(-1)
    if is_maze:
        colour_map = ListedColormap(MAZE_COLOURS)
        limits = dict(vmin=-0.5, vmax=len(MAZE_COLOURS) - 0.5)
    else:
        colour_map = ListedColormap([tuple(c) for c in _token_colours(vocab_size)])
        limits = dict(vmin=-0.5, vmax=vocab_size - 0.5)
    for axes, (name, tokens, wrong) in zip(axes_grid, panels):
        if sudoku is not None:
            _draw_sudoku(axes, tokens, question, wrong, sudoku)
        else:
            grid = _as_grid(np.clip(tokens, 0, (len(MAZE_COLOURS) if is_maze else vocab_size) - 1), shape, 0)
            axes.imshow(grid, cmap=colour_map, interpolation="nearest", **limits)
        if sudoku is None and not is_maze and max(shape) <= 16:
            for (r, c), value in np.ndenumerate(grid):
                axes.text(c, r, str(value), ha="center", va="center", fontsize=7, color="black")
        axes.set_xticks([])
        axes.set_yticks([])
        if wrong is None:
            axes.set_title(name, fontsize=9)
            continue
        wrong_grid = _as_grid(wrong.astype(np.int64), shape, 0).astype(bool)
        rows_wrong, cols_wrong = np.nonzero(wrong_grid)
        if rows_wrong.size and sudoku is None:
            axes.scatter(cols_wrong, rows_wrong, marker="x", s=max(12, 900 / max(shape)), color="red",
                         linewidths=1.5, label="wrong")
        solved = not bool(wrong.any())
        count = int(wrong.sum())
        status = "solved" if solved else f"wrong ({count} cell{'' if count == 1 else 's'})"
        halts = " - halts" if name == halt_step else ""
        axes.set_title(f"step {name + 1}: q_halt {q_halts[name]:+.2f}{halts}\n{status}", fontsize=8.5,
                       color="darkgreen" if solved else "firebrick")
        if name == halt_step:
            for spine in axes.spines.values():
                spine.set_edgecolor("black")
                spine.set_linewidth(2.5)
    for axes in axes_grid[len(panels):]:
        axes.axis("off")
    if is_maze:
        handles = [Patch(facecolor=c, edgecolor="gray", label=n) for c, n in zip(MAZE_COLOURS[1:], MAZE_NAMES[1:])]
        handles.append(Line2D([], [], marker="x", color="red", linestyle="", label="wrong cell"))
        figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout(rect=(0, 0.06 if is_maze else 0, 1, 0.95 if title else 1))
    return figure


def _draw_sudoku(axes, tokens, question, wrong, geom) -> None:
    """One Sudoku panel: tokens (blank 1, digit d -> d + 1) as digits; the question's givens in
    black, other digits blue, wrong cells red on a red shade; thick lines around the boxes."""
    N = geom.size
    tokens = np.asarray(tokens).reshape(N, N)
    given = np.asarray(question).reshape(N, N) > 1
    wrong = np.zeros((N, N), bool) if wrong is None else np.asarray(wrong).reshape(N, N)
    shade = np.ones((N, N, 3))
    shade[wrong] = (1.0, 0.82, 0.82)
    axes.imshow(shade, interpolation="nearest")
    for k in range(N + 1):
        axes.axvline(k - 0.5, color="black", linewidth=1.8 if k % geom.box_cols == 0 else 0.4)
        axes.axhline(k - 0.5, color="black", linewidth=1.8 if k % geom.box_rows == 0 else 0.4)
    size = max(5.0, 70.0 / N)
    for (r, c), token in np.ndenumerate(tokens):
        if token == 1:
            continue  # blank
        text = "?" if token == 0 else str(int(token) - 1)
        colour = "firebrick" if wrong[r, c] else "black" if given[r, c] else "tab:blue"
        axes.text(c, r, text, ha="center", va="center", fontsize=size, color=colour,
                  fontweight="bold" if given[r, c] else "normal")
    axes.set_xlim(-0.5, N - 0.5)
    axes.set_ylim(N - 0.5, -0.5)


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
