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

Everything reported is read back from the run directories' metrics.jsonl
(trm_fast.train.run_directory.load_run, which also copes with the records a resumed run appends
twice), so the table always equals the runs' files.

    spec.py     the study: variants, seeds, run directories, study.json (the base presets and their
                STUDY_OVERRIDES are in trm_fast.presets)
    runner.py   training the runs, in this process or `jobs` at a time in spawned processes
    report.py   the figures of the finished runs, the Markdown table and the three outputs
"""
from trm_fast.presets import STUDY_OVERRIDES
from trm_fast.study.report import (OUTPUT_NAMES, SCALARS, SHORT_NAMES, TABLE_COLUMNS, base_summary, build_report, data_summary,
                                   differing_fields, held_out_text, markdown_report, markdown_table, mean_and_std,
                                   summarise_run, variant_costs, variant_label, write_outputs)
from trm_fast.study.runner import StudyResult, run_state, run_study
from trm_fast.study.spec import (DEFAULT_VARIANT_NAMES, DEFAULT_VARIANTS, FORMAT, STUDY_FILE, SUDOKU_VARIANTS, VERSION,
                                 RunSpec, Study, StudyError, Variant, builtin_variants, check_study_dir, make_study,
                                 parse_variant)
from trm_fast.train.run_directory import RunRecords, load_run, load_runs

__all__ = [
    "STUDY_OVERRIDES", "OUTPUT_NAMES", "SCALARS", "SHORT_NAMES", "TABLE_COLUMNS", "base_summary", "build_report", "data_summary",
    "differing_fields", "held_out_text", "markdown_report", "markdown_table", "mean_and_std", "summarise_run",
    "variant_costs", "variant_label", "write_outputs", "StudyResult", "run_state", "run_study",
    "DEFAULT_VARIANT_NAMES", "DEFAULT_VARIANTS", "FORMAT", "STUDY_FILE", "SUDOKU_VARIANTS", "VERSION", "RunSpec",
    "Study", "StudyError", "Variant", "builtin_variants", "check_study_dir", "make_study", "parse_variant",
    "RunRecords", "load_run", "load_runs",
]
