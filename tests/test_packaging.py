"""What a user gets: the README example runs, and the wheel installs the kernels inside trm_fast only."""
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_readme_library_example_runs():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Python API"):]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "README's Python API section has no python example"
    result = subprocess.run([sys.executable, "-c", blocks[0]], capture_output=True, text=True, cwd=REPO, timeout=120,
                            env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"loss \d+\.\d+, halted \d/8", result.stdout)


@pytest.mark.slow
def test_wheel_installs_kernels_only_inside_trm_fast(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-w", str(tmp_path), "-q"],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(tmp_path.glob("trm_fast-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert "kernels" not in top_level, "a top-level `kernels` package would shadow Hugging Face's"
    assert "trm_fast/kernels/rms_norm_residual.py" in names
    assert "trm_fast/csrc/rms_norm_residual.cu" in names
    assert "trm_fast/study/runner.py" in names and "trm_fast/presets.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "trm-fast = trm_fast.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert f"trm_fast-{wheel.name.split('-')[1]}.dist-info/licenses/LICENSE" in names


def test_version_flag_prints_the_installed_version(capsys):
    from importlib.metadata import version

    import trm_fast
    from trm_fast.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"trm-fast {trm_fast.__version__}\n"
    assert version("trm-fast") == trm_fast.__version__  # pyproject.toml reads it from trm_fast


def test_license_file_is_the_license_pyproject_names():
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^license = "Apache-2.0"$', pyproject, flags=re.M)
    assert re.search(r'^license-files = \["LICENSE"\]$', pyproject, flags=re.M)
    text = " ".join((REPO / "LICENSE").read_text().split())
    assert text.startswith("Apache License Version 2.0, January 2004 http://www.apache.org/licenses/")
    for section in ("1. Definitions.", "4. Redistribution.", "9. Accepting Warranty or Additional Liability.",
                    "END OF TERMS AND CONDITIONS", "APPENDIX: How to apply the Apache License to your work."):
        assert section in text
