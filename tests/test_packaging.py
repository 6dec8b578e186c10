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
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "README has no python example"
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
