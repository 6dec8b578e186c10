"""Sudoku: the built-in generator (trm_fast.data.sudoku), the Sudoku-Extreme CSV format, and puzzles
as rows of digits. Its shape is the grid's `Geometry` (N x N in R x C boxes)."""
from __future__ import annotations

import numpy as np

from trm_fast.data import sudoku as sudoku_lib
from trm_fast.data.errors import DataError
from trm_fast.puzzles.base import PuzzleKind, lookup_cells


class SudokuKind(PuzzleKind):
    name = "sudoku"
    settings_field = "sudoku"
    default_presets = ("sudoku-paper", "sudoku-cpu")
    guess_rank = 0
    marks_note = "('*' after a cell: the model's digit there is wrong)"

    def geometry(self, settings):
        return sudoku_lib.geometry(settings.size, settings.box_rows, settings.box_cols)

    # -- the built-in generator

    def settings_problem(self, sudoku):
        try:
            self.geometry(sudoku)
        except DataError as error:
            return f"sudoku.size/box_rows/box_cols: {error.problem}"
        if not (sudoku.num_train >= 1 and sudoku.num_test >= 1):
            return "sudoku.num_train and sudoku.num_test must be >= 1"
        if not (sudoku.num_aug >= 0 and sudoku.min_rating >= 0):
            return "sudoku.num_aug and sudoku.min_rating must be >= 0"
        return None

    def cache_name(self, sudoku) -> str:
        geom = self.geometry(sudoku)
        return (f"sudoku-{geom.size}x{geom.size}-box{geom.box_rows}x{geom.box_cols}-train{sudoku.num_train}"
                f"-test{sudoku.num_test}-aug{sudoku.num_aug}-rating{sudoku.min_rating}-seed{sudoku.seed}")

    def build(self, folder, sudoku, log=print):
        """Uses every core when the set is large (`sudoku_lib.auto_workers`) and says so in `log`."""
        return sudoku_lib.build_sudoku_dataset(
            folder, size=sudoku.size, box_rows=sudoku.box_rows, box_cols=sudoku.box_cols, num_train=sudoku.num_train,
            num_test=sudoku.num_test, num_aug=sudoku.num_aug, min_rating=sudoku.min_rating, seed=sudoku.seed,
            workers=None, log=log)

    def small_settings(self):
        from trm_fast.config import SudokuSettings

        return SudokuSettings(size=4, num_train=4, num_test=4, num_aug=1)

    def data_shape(self, sudoku):
        return sudoku.size + 2, sudoku.size ** 2, float(sudoku.num_train)  # one group per puzzle

    def describe_settings(self, sudoku) -> str:
        rating = f", min rating {sudoku.min_rating}" if sudoku.min_rating else ""
        return f"{sudoku.size}x{sudoku.size} Sudoku{rating}"

    def study_data_summary(self, sudoku) -> str:
        return (f"{sudoku.size}x{sudoku.size} Sudoku ({sudoku.num_train:,} train x {1 + sudoku.num_aug} with augmentation "
                f"/ {sudoku.num_test:,} test, min rating {sudoku.min_rating}, generator seed {sudoku.seed})")

    def study_held_out_text(self, sudoku) -> str:
        return (f"the test split of the built-in Sudoku data ({sudoku.num_test:,} puzzles made by the same generator "
                "with the same seed on a separate stream; none equivalent to a training puzzle under the Sudoku "
                "symmetries)")

    def study_variants(self):
        from trm_fast.study.spec import SUDOKU_VARIANTS

        return SUDOKU_VARIANTS

    # -- recognising and reading data

    def shape_from_record(self, record):
        try:
            return True, sudoku_lib.geometry(int(record["size"]), record.get("box_rows"), record.get("box_cols"))
        except (KeyError, TypeError, ValueError):
            return False, None

    def guess_shape(self, vocab_size, seq_len):
        geom = sudoku_lib.sudoku_geometry_of(None, vocab_size, seq_len)
        return geom is not None, geom

    def is_csv(self, path) -> bool:
        from trm_fast.data.csv_format import is_sudoku_csv

        return path.is_file() and is_sudoku_csv(path)

    def read_csv(self, path):
        from trm_fast.data.csv_format import read_sudoku_csv

        records = read_sudoku_csv(path)
        geom = records.geometry
        arrays = sudoku_lib.grouped_sudoku_examples(records.questions, records.solutions, geom)
        return records.inputs, records.labels, arrays, geom.size + 2, geom

    # -- the command line

    def add_data_command(self, kinds) -> None:
        sudoku = kinds.add_parser("sudoku", help="generated Sudoku with a unique solution, augmented as the reference")
        sudoku.add_argument("--out", required=True, metavar="DIR", help="dataset folder to write (reference layout: train/, test/)")
        sudoku.add_argument("--size", type=int, choices=(4, 6, 8, 9), default=9, help="grid side (boxes 2x2, 2x3, 2x4, 3x3)")
        sudoku.add_argument("--box-rows", type=int, default=None, help="rows of a box; default: the most square box")
        sudoku.add_argument("--box-cols", type=int, default=None, help="columns of a box; default: size / box rows")
        sudoku.add_argument("--num-train", type=int, default=1000, help="training puzzles (before augmentation)")
        sudoku.add_argument("--num-test", type=int, default=1000, help="test puzzles (none equivalent to a training puzzle)")
        sudoku.add_argument("--num-aug", type=int, default=1000, help="augmented copies of every training puzzle")
        sudoku.add_argument("--min-rating", type=int, default=0,
                            help="keep puzzles whose solver rating (guesses to prove uniqueness) is at least this; "
                                 "10 keeps about the hardest 15%% of 9x9 puzzles")
        sudoku.add_argument("--seed", type=int, default=0, help="generator seed")
        sudoku.add_argument("--workers", type=int, default=None,
                            help="generator processes; default: 1 for small sets, else every core; never changes the data")
        sudoku.add_argument("--csv", action="store_true",
                            help="also write train.csv (the puzzles without augmentation) and test.csv, Sudoku-Extreme format")
        sudoku.set_defaults(handler=cmd_data_sudoku)

    def convert_csv(self, args):
        from trm_fast.cli import UsageError
        from trm_fast.data.csv_format import convert_sudoku_csv

        if args.augment:
            raise UsageError("--augment is for maze CSV files; Sudoku files take --num-aug N")
        folder = convert_sudoku_csv(args.train, args.test, args.out, num_aug=args.num_aug, seed=args.seed,
                                    subsample=args.subsample)
        return folder, "Sudoku puzzles"

    # -- checkpoints and shipped models

    def puzzle_info(self, settings: dict) -> dict:
        geom = sudoku_lib.geometry(settings["size"], settings.get("box_rows"), settings.get("box_cols"))
        return {"kind": "sudoku", "size": geom.size, "box_rows": geom.box_rows, "box_cols": geom.box_cols}

    def shape_from_puzzle_info(self, puzzle):
        return sudoku_lib.geometry(int(puzzle["size"]), puzzle.get("box_rows"), puzzle.get("box_cols"))

    def shape_from_settings(self, settings):
        return sudoku_lib.geometry(int(settings.get("size", 9)), settings.get("box_rows"), settings.get("box_cols"))

    def shape_for_model(self, seq_len, geom):
        return geom if geom is not None else sudoku_lib.geometry_for_cells(seq_len, where="model")

    def write_held_out_sets(self, folder, train, test, run_data_dir, test_file, log):
        from trm_fast.data.csv_format import write_sudoku_csv

        geom = sudoku_lib.sudoku_geometry_of(run_data_dir, train.metadata.vocab_size, train.metadata.seq_len)
        copies = int(round(train.inputs.shape[0] / train.metadata.total_groups))  # original + augmented copies
        write_sudoku_csv(folder / test_file, test.inputs, test.labels, geometry=geom)
        originals = np.concatenate([train.inputs[::copies], test.inputs])
        seen = {sudoku_lib.canonical_key(digits, geom) for digits in sudoku_lib.tokens_to_digits(originals)}
        for file, count, keep, min_rating in (("seed1.csv", 600, 500, 0), ("seed1-guess.csv", 400, 300, 1)):
            questions, solutions = sudoku_lib.generate_sudokus(count, geom.size, geom.box_rows, geom.box_cols,
                                                               min_rating=min_rating, seed=1)
            unseen = np.array([sudoku_lib.canonical_key(question, geom) not in seen for question in questions])
            log(f"{file}: {int((~unseen).sum())} of {count} are equivalent to a training or test puzzle; keeping {keep}")
            write_sudoku_csv(folder / file, sudoku_lib.digits_to_tokens(questions[unseen][:keep]),
                             sudoku_lib.digits_to_tokens(solutions[unseen][:keep]), geometry=geom)

    # -- pictures: digits in a grid with its boxes

    crosses_wrong_cells = False  # wrong digits are red on a red shade instead

    def figure_problem(self, geom, cells):
        if geom is None:
            return "a Sudoku picture needs the grid's geometry"
        return None if geom.cells == cells else f"a {geom} Sudoku has {geom.cells} cells, the question {cells}"

    def panel_cell_inches(self, side):
        return 0.17

    def draw_panel(self, axes, tokens, question, wrong, geom, grid_shape, vocab_size):
        """Tokens (blank 1, digit d -> d + 1) as digits; the question's givens in black, other digits
        blue, wrong cells red on a red shade; thick lines around the boxes."""
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

    # -- puzzles as text and integers

    def describe_format(self, fmt) -> str:
        return f"{fmt.geometry} Sudoku"

    def text_cells(self, text):
        """Digits; the box separators `trm-fast solve` prints and spaces are dropped."""
        return [ch for ch in text if ch not in "|+- \t\r\n"]

    def text_rows(self, rows):
        return [cells for cells in super().text_rows(rows) if cells]  # separator lines hold no cells

    def values_from_cells(self, fmt, cells, where):
        digits = "." + "".join(str(d) for d in range(1, fmt.geometry.size + 1))
        return lookup_cells(["." if ch == "0" else ch for ch in cells], digits, fmt.side, where, offset=0)

    def value_range(self, fmt):
        return 0, fmt.geometry.size, f"Sudoku digits (0 blank, 1..{fmt.geometry.size})"

    def tokens_from_values(self, fmt, values, where):
        problem = sudoku_lib.rule_violation(values, fmt.geometry)
        if problem:
            raise DataError(where, f"the givens break a Sudoku rule: the grid {problem}")
        return sudoku_lib.digits_to_tokens(values).astype(np.int64)

    def answer_values(self, fmt, tokens):
        return np.clip(tokens - sudoku_lib.DIGIT_OFFSET, 0, fmt.geometry.size)

    def answer_text(self, fmt, tokens):
        rows = fmt.grid(tokens)
        return "\n".join("".join(str(d) if d else "." for d in row) for row in rows)

    def render(self, tokens, geom, marks=None):
        if geom is None or tokens.size != geom.cells:
            return super().render(tokens, geom, marks)
        return sudoku_lib.render_sudoku(np.clip(tokens, 0, geom.size + 1), geom=geom, marks=marks)


def cmd_data_sudoku(args) -> int:
    """`trm-fast data sudoku`: build a folder, print a test puzzle and its solution (and write CSV files)."""
    from trm_fast.data import load_split, write_sudoku_csv

    geom = sudoku_lib.geometry(args.size, args.box_rows, args.box_cols)
    workers = args.workers or sudoku_lib.auto_workers(args.num_train + args.num_test)
    folder = sudoku_lib.build_sudoku_dataset(
        args.out, size=geom.size, box_rows=geom.box_rows, box_cols=geom.box_cols, num_train=args.num_train,
        num_test=args.num_test, num_aug=args.num_aug, min_rating=args.min_rating, seed=args.seed, workers=workers,
        log=print)
    print(f"wrote {folder}: {args.num_train} train puzzles x {1 + args.num_aug} (original + {args.num_aug} augmented) "
          f"+ {args.num_test} test {geom} Sudoku, min rating {args.min_rating} (reference layout; disjoint up to symmetry)")
    copies = 1 + args.num_aug
    for split in ("train", "test"):
        data = load_split(folder, split)
        if args.csv:
            originals = slice(None, None, copies if split == "train" else 1)  # no augmented copies in the CSV
            path = write_sudoku_csv(folder / f"{split}.csv", data.inputs[originals], data.labels[originals], geometry=geom)
            print(f"wrote {path}")
        if split == "test":
            print("test puzzle 0:")
            print(sudoku_lib.render_sudoku(data.inputs[0], geom=geom))
            print("its solution:")
            print(sudoku_lib.render_sudoku(data.labels[0], geom=geom))
    return 0


KIND = SudokuKind()
