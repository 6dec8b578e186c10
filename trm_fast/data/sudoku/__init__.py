"""Sudoku: an exact bit-mask solver, a seeded generator of unique puzzles, the reference augmentation,
and dataset folders in the reference Sudoku-Extreme layout.

Grids are N x N with boxes of R rows x C columns (N = R*C <= 9; 9x9 with 3x3 boxes, 6x6 with 2x3
boxes, 4x4 with 2x2 boxes, also 8x8 with 2x4 boxes). The rows fall into C *bands* of R rows, the
columns into R *stacks* of C columns. Puzzles and solutions are held as DIGITS (uint8, 0 = blank,
1..N) in row-major order; the dataset folders hold TOKENS as the reference builder writes them:
PAD 0, blank 1, digit d -> d + 1 (vocabulary N + 2: 11 for 9x9), every cell supervised.

Solver (`solve_sudoku`, `count_solutions`). Candidates of a cell are an int bit mask (digit d at
bit 5*(d-1), so that summing the masks of a unit counts how many cells still allow each digit, in
one C-level `sum`). Constraint propagation applies naked singles (a cell with one candidate: its
digit is removed from its peers) and hidden singles (a digit with one place left in a row, column or
box goes there) to a fixed point; then the solver branches on the unsolved cell with the fewest
candidates (lowest index on ties), trying its digits in increasing order, depth first, and stops at
`limit` solutions. Its *rating* of a puzzle is the number of guesses (trial assignments at branch
points) of the complete search that counts up to 2 solutions, i.e. the whole search tree that
proves uniqueness: 0 = solved by singles alone; each branch point adds its number of candidates.
The rating depends on the cell order (the tie-break), so a symmetric image of a puzzle may rate a
little differently.

Generator (`generate_sudokus`). Puzzle i of (seed, stream) depends on those only: a random full
grid (the search above from the empty grid, digit order shuffled at every branch), then the givens
are removed one by one in a random order, each removal kept only when the puzzle stays uniquely
solvable (the removed digit v of cell c leaves the solution unique exactly when no solution has
c != v: one search, usually settled by propagation alone), so every puzzle is minimal. Puzzles
rated below `min_rating` are dropped (a "hard" set: `min_rating=10` keeps about the hardest 15% of
such minimal 9x9 puzzles, which need several levels of guessing; 40% of them need no guess).
Puzzles equivalent to an earlier one (or to one in `exclude`) under the Sudoku symmetries are
dropped: see `canonical_key`.

Speed (one process, pure Python; this project's 2-core AMD EPYC machine, `nice`d beside a training
run on the other core, so a lower bound), puzzles kept per second including de-duplication:
    9x9, min_rating 0:   ~67/s   (mean 24.4 givens, mean rating 4.0)
    9x9, min_rating 10:  ~11/s   (mean rating 16; 15% of candidates pass)
    6x6, min_rating 0:   ~480/s  (mean 10.1 givens; 95% rate 0)
(`trm-fast data sudoku --out DIR --num-train 1000 --num-test 1000 --num-aug 0 --workers 1
[--min-rating 10]` prints the rate.) Generation is deterministic per candidate index, so it runs in
`workers` processes (spawned) with the same result; `auto_workers` uses every core for large sets:
one core makes 1000 + 1000 hard 9x9 puzzles in about 3 minutes, so N cores in about 3/N minutes
plus ~3 s of process start-up (an estimate from the per-core rate; multi-process runs were only
checked for identical output, not timed, here). Profiling: ~80% of the time is the removal checks
of the digging step, nearly all of it in the propagation. Tried and dropped for being no faster:
removing blocks of givens at once (galloping), naked singles only, MRV by C-level byte scans,
solution-guided value order. A numpy propagation over many puzzles was not tried: it would revisit
all N x N x N candidates per pass where the scalar loop touches only the changed cells.

Augmentation (`augment_sudokus`, as the reference builder): every copy relabels the digits at
random, transposes with probability 1/2 (only when R == C), shuffles the bands and the rows within
each band, and the stacks and the columns within each stack; the same transform maps the question
and its answer. `num_aug` copies per puzzle follow the original.

Folders (`build_sudoku_dataset`): one puzzle identifier (0); every example its own puzzle; a group
per generated puzzle holding the original and its augmented copies (train) or the original only
(test), exactly the reference `build_sudoku_dataset.py` layout; `trm_fast_build.json` records the
settings (kind "sudoku" and the box shape, which `sudoku_geometry_of` reads back).
"""
# The code lives in geometry (shapes, tokens), solver, generator (with augmentation and the
# symmetry key), grids (token / digit conversion, checks, pictures) and folders (dataset folders);
# every name stays importable from here.
from __future__ import annotations

from trm_fast.data.sudoku.geometry import (  # noqa: F401
    BLANK,
    default_box,
    DIGIT_OFFSET,
    _FIELD,
    Geometry,
    geometry,
    geometry_for_cells,
    MAX_SIZE,
    PAD,
    SUPPORTED_SIZES,
    _tables,
    _Tables,
)
from trm_fast.data.sudoku.solver import (  # noqa: F401
    _as_digits,
    count_solutions,
    _propagate,
    _search,
    solve_sudoku,
    SolveResult,
    _start,
    sudoku_rating,
)
from trm_fast.data.sudoku.generator import (  # noqa: F401
    apply_transforms,
    augment_sudokus,
    _candidate_chunks,
    _candidates,
    canonical_key,
    _dig,
    generate_sudokus,
    _grouped_permutations,
    iter_sudokus,
    make_puzzle,
    MAX_MISSES_IN_A_ROW,
    _puzzle_seed,
    _random_solution,
    random_transforms,
    _refined_key,
    Transforms,
)
from trm_fast.data.sudoku.grids import (  # noqa: F401
    check_sudoku_pair,
    digits_to_tokens,
    first_bad_pair,
    render_sudoku,
    rule_violation,
    _rule_violations,
    tokens_to_digits,
)
from trm_fast.data.dataset import read_build_info  # noqa: F401
from trm_fast.data.sudoku.folders import (  # noqa: F401
    auto_workers,
    build_sudoku_dataset,
    BUILD_VERSION,
    grouped_sudoku_examples,
    sudoku_geometry_of,
    write_sudoku_split,
)
