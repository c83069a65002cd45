"""The house rules, checked on the source: no import cycles, Ray and MLflow each in one module,
and an engine that runs without Ray, MLflow or the command line."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "kdsearch"


def import_graph() -> dict[str, set[str]]:
    """Module -> the kdsearch modules and third-party top-level packages it imports (anywhere in the file)."""
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for module, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            else:
                continue
            for name in names:
                while name and name not in files and name.startswith("kdsearch"):
                    name = name.rpartition(".")[0]
                if name and name != module and not module.startswith(name + "."):
                    targets.add(name if name in files else name.split(".")[0])
        graph[module] = targets
    return graph


def reachable(graph, start):
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_module_imports_one_that_imports_it_back():
    graph = import_graph()
    cycles = sorted({" <-> ".join(sorted((a, b))) for a in graph for b in graph[a] if b in graph and a in reachable(graph, b)})
    assert not cycles, f"import cycles: {cycles}"


def test_ray_and_mlflow_each_live_in_one_module():
    graph = import_graph()
    assert sorted(m for m, t in graph.items() if "ray" in t) == ["kdsearch.ray_trials"]
    # (kdsearch/serving/mlflow_model.py is not imported by kdsearch: MLflow stores it as a
    # registered model's own code, which loads where kdsearch is not installed.)
    assert sorted(m for m, t in graph.items() if "mlflow" in t) == ["kdsearch.serving.mlflow_model", "kdsearch.tracking"]
    assert not [m for m, t in graph.items() if "kdsearch.serving.mlflow_model" in t]
    assert not [t for t in graph["kdsearch.serving.mlflow_model"] if t.startswith("kdsearch")]


def test_the_engine_imports_neither_ray_mlflow_nor_the_cli():
    graph = import_graph()
    for engine in ("kdsearch.train", "kdsearch.api", "kdsearch.teachers", "kdsearch.teacher_outputs"):
        assert not reachable(graph, engine) & {
            "ray",
            "mlflow",
            "kdsearch.cli",
            "kdsearch.ray_trials",
            "kdsearch.tracking",
            "kdsearch.sweeper",
        }, engine


def test_the_formatter_has_formatted_the_code():
    # `ruff format` owns the layout of the code (line length in pyproject.toml); skips only close hand-made tables.
    root = PACKAGE.parent
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "kdsearch", "tests", "benchmarks"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    marker = "# fmt" + ": skip"
    skips = [
        line
        for folder in ("kdsearch", "tests", "benchmarks")
        for p in (root / folder).rglob("*.py")
        for line in p.read_text().splitlines()
        if line.rstrip().endswith(marker)
    ]
    assert all(line.strip()[0] in "]})" for line in skips), skips
