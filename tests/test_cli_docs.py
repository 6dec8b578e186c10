"""The README and docs/ say only what is true: every `trm-fast ...` command in them parses with the CLI's
own parser (so every flag exists), every relative link points at a file, and the results tables and
headline figures equal their committed logs in docs/results/."""
import argparse
import json
import re
import shlex
import statistics
from pathlib import Path

import pytest

from trm_fast.cli import UsageError, make_parser

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
RESULTS = REPO / "docs" / "results"


def _commands(text: str) -> list[str]:
    """`trm-fast ...` commands: lines of fenced code blocks and inline code spans, comments dropped."""
    found = []
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split(" # ")[0].strip()
            if line.startswith("trm-fast "):
                found.append(line)
    without_blocks = re.sub(r"```.*?```", "", text, flags=re.S)
    found += [span for span in re.findall(r"`([^`\n]+)`", without_blocks) if span.startswith("trm-fast ")]
    return found


def test_the_pages_hold_commands():
    assert len(_commands((REPO / "README.md").read_text())) >= 15


def _names_a_command(parser, words: list[str]) -> bool:
    """`trm-fast data maze` and the like: command words only, each a subcommand of the one before."""
    for word in words:
        choices = next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})
        if word not in choices:
            return False
        parser = choices[word]
    return True


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_in_the_docs_parses(page):
    parser = make_parser()
    for command in _commands(page.read_text()):
        words = shlex.split(command)[1:]
        if not any(word.startswith("-") for word in words) and _names_a_command(parser, words):
            continue  # a mention of a command ("`trm-fast eval`"), not a command line
        try:
            parser.parse_args(words)
        except SystemExit as stop:  # --help prints and exits 0
            assert stop.code == 0, command
        except UsageError as error:
            pytest.fail(f"{page.name}: `{command}` does not parse: {error}")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_point_at_files(page):
    for target in re.findall(r"\]\(([^)]+)\)", page.read_text()):
        if "://" in target or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.name} links to a missing {target}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_internal_notes_in_user_text(page):
    text = page.read_text()
    assert "$OUT" not in text and "the issue" not in text.lower()


def _records(name: str) -> list[dict]:
    return [json.loads(line) for line in (RESULTS / name).read_text().splitlines() if line.strip()]


def _log_facts(name: str) -> dict:
    """What a committed metrics.jsonl says: per 1,000 steps the held-out exact / token accuracy (%)
    and the training minutes, the final evaluation, the median steps/s and the last step's minutes."""
    records = _records(name)
    train = [r for r in records if "steps_per_second" in r]
    minutes = {r["step"]: r["elapsed_s"] / 60 for r in train}
    evals = {r["step"]: (100 * r["eval/exact_accuracy"], 100 * r["eval/accuracy"]) for r in records
             if "eval/exact_accuracy" in r}
    final = next(r for r in records if r.get("final"))
    return dict(evals=evals, minutes=minutes, final=(final["step"], 100 * final["test/exact_accuracy"],
                                                       100 * final["test/accuracy"]),
                median_steps_per_second=statistics.median(r["steps_per_second"] for r in train),
                last_minutes=train[-1]["elapsed_s"] / 60)


def _table_rows(text: str, heading: str) -> list[list[str]]:
    """The cells of the first table after `heading`, header and rule excluded."""
    section = text[text.index(heading):]
    table = re.search(r"((?:^\|.*\|\n)+)", section, flags=re.M).group(1).splitlines()[2:]
    return [[cell.strip().strip("*") for cell in row.strip("|").split("|")] for row in table]


MAZE_LOG = "maze-cpu-20261207-metrics.jsonl"  # the quick start as it is: the schedule fills 13.5 minutes
MAZE_5000_LOG = "maze-cpu-random7-bf16-20261202-metrics.jsonl"  # the preset's earlier fixed 5,000 steps


def test_results_tables_equal_their_logs():
    text = (REPO / "docs" / "results.md").read_text()
    maze = _log_facts(MAZE_LOG)
    rows = _table_rows(text, "## Mazes")
    for step, minutes, exact, token in rows[:-1]:
        step = int(step.replace(",", ""))
        assert minutes == f"{maze['minutes'][step]:.1f} min"
        assert (exact, token) == (f"{maze['evals'][step][0]:.1f}%", f"{maze['evals'][step][1]:.2f}%")
    final_step, final_exact, final_token = maze["final"]
    assert rows[-1][2:] == [f"{final_exact:.1f}%", f"{final_token:.2f}%"] and rows[-1][0].startswith(f"{final_step:,}")
    assert rows[-1][1] == f"{maze['last_minutes']:.1f} min"
    schedule = next(r["schedule_steps"] for r in _records(MAZE_LOG) if "schedule_steps" in r)
    assert final_step <= schedule and f"the schedule to {schedule:,} steps" in text  # the minutes may stop it first
    sudoku = _log_facts("sudoku-cpu-bf16-20261202-metrics.jsonl")
    rows = _table_rows(text, "## Sudoku")
    for step, exact, token in rows[:-1]:
        expected = sudoku["evals"][int(step.replace(",", ""))]
        assert (float(exact.rstrip("%")), float(token.rstrip("%"))) == (round(expected[0], 1), round(expected[1], 2))
    assert rows[-1][1] == f"{sudoku['final'][1]:.1f}%"


def test_headline_figures_equal_their_logs():
    readme = (REPO / "README.md").read_text()
    results = (REPO / "docs" / "results.md").read_text()
    maze = _log_facts(MAZE_LOG)
    maze_5000 = _log_facts(MAZE_5000_LOG)
    maze_fp32 = _log_facts("maze-cpu-random7-20261202-metrics.jsonl")
    sudoku = _log_facts("sudoku-cpu-bf16-20261202-metrics.jsonl")
    sudoku_fp32 = _log_facts("sudoku-cpu-20261202-metrics.jsonl")
    for text in (readme, results):
        assert f"{maze_5000['final'][1]:.1f}%" in text and f"{maze_5000['median_steps_per_second']:.1f}" in text
        assert f"{maze_fp32['median_steps_per_second']:.1f}" in text and f"{maze_fp32['final'][1]:.1f}%" in text
        assert f"{sudoku['final'][1]:.1f}%" in text and f"{sudoku['last_minutes']:.1f} min" in text
    assert f"took {maze['last_minutes']:.1f} minutes and solved **{maze['final'][1]:.1f}%**" in readme
    assert f"{maze_fp32['final'][0]:,} of the 5,000 steps" in results
    assert f"a median {maze['median_steps_per_second']:.1f} steps/s" in results
    assert f"a median {sudoku['median_steps_per_second']:.1f} steps/s" in results
    assert f"{sudoku_fp32['median_steps_per_second']:.1f} steps/s, {sudoku_fp32['final'][0]:,} steps" in results
    for log in (MAZE_LOG, MAZE_5000_LOG):
        final_file = json.loads((RESULTS / log.replace("metrics.jsonl", "final_eval.json")).read_text())
        assert (final_file["step"], 100 * final_file["test/exact_accuracy"]) == _log_facts(log)["final"][:2]


def _styles_exact(name: str) -> dict[str, str]:
    """style -> exact accuracy (all steps) of a committed `eval --maze-styles --json` file, as the docs print it."""
    rows = json.loads((RESULTS / name).read_text())["rows"]
    return {row["style"]: f"{row['exact']:.1%}" for row in rows if row["exact"] is not None}


def test_the_readme_maze_styles_table_equals_its_logs():
    """README's table of every maze style: each row names its style in backticks, each column's
    figure equals the committed styles file of the run the column header names."""
    readme = (REPO / "README.md").read_text()
    columns = [_styles_exact(f"{run}-maze-styles.json") for run in ("maze-cpu-ship", "maze-random8-halt4-20261207", "maze-random8-20261207")]
    rows = _table_rows(readme, "| maze style |")  # the table starts at its own header
    assert len(rows) >= 6
    for cells in rows:
        style = re.search(r"`([a-z0-9-]+)`", cells[0]).group(1)
        assert cells[1:] == [column[style] for column in columns], style
