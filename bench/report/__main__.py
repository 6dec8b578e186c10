"""`python -m bench.report` (and `python bench/report` from the repository root): see bench/report/__init__.py."""
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # run as a folder, the repository root is not on the path
    sys.path.insert(0, str(REPO_ROOT))

from bench.report import main  # noqa: E402

sys.exit(main())
