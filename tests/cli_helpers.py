"""What the CLI tests share: a tiny `trm-fast train` command line and the one-line-error check."""


def train_args(dataset, data_dir, run_dir, sets, steps, *extra, preset=None):
    """`trm-fast train` arguments for a short CPU run with every `--set` in `sets`."""
    args = ["train", "--dataset", dataset, *(["--preset", preset] if preset else []), "--data-dir", str(data_dir),
            "--run-dir", str(run_dir), "--max-steps", str(steps), "--device", "cpu", "--backend", "torch", "--no-progress"]
    for item in sets:
        args += ["--set", item]
    return args + list(extra)


def one_error_line(capsys, expected: str):
    """The command printed exactly one line on stderr, a `trm-fast: error:` naming `expected`."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("trm-fast: error: ") and expected in err[0], err[0]
    assert "Traceback" not in err[0]
