"""bench/ imports without a cycle: no module imports one that (through others) imports it back, none
imports pytest's conftest, and each imports alone in a fresh set of bench modules."""
import ast
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH = REPO_ROOT / "bench"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def bench_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(BENCH.rglob("*.py")) if path.name != "__main__.py"}


def bench_imports(path: Path, known: set[str]) -> set[str]:
    """The bench modules `path` imports anywhere (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in known}
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of `graph` as a path that returns to its start, or []."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_bench_modules_import_without_a_cycle():
    modules = bench_modules()
    graph = {name: bench_imports(path, set(modules)) - {name} for name, path in modules.items()}
    graph = {name: {target for target in targets if not name.startswith(target + ".")} for name, targets in graph.items()}
    assert "bench.report.tasks" in graph and "bench.bench_ops" in graph  # the walk saw the tree
    assert find_cycle(graph) == []
    importers_of_conftest = sorted(name for name, targets in graph.items() if "bench.conftest" in targets)
    assert importers_of_conftest == [], "modules importing pytest's conftest (use bench.profiles)"


def test_each_bench_module_imports_alone():
    script = (
        "import importlib, sys\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    for loaded in [m for m in sys.modules if m == 'bench' or m.startswith('bench.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as error:\n"
        "        failed.append(f'{name}: {type(error).__name__}: {error}')\n"
        "print('\\n'.join(failed) or 'all imported')\n"
    )
    names = sorted(bench_modules())
    result = subprocess.run([sys.executable, "-c", script, *names], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300, env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin",
                                              "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "all imported", result.stdout
