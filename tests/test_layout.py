"""The house rules, checked on the source: no import cycles, Ray and MLflow each in one module,
and an engine that runs without Ray, MLflow or the command line."""

import ast
import re
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


FACE = {"__init__.py", "__main__.py", "api.py", "cli.py", "config.py", "errors.py"}


def room_of(module: str) -> str:
    """A module's room: its folder under kdsearch/ ("sweeper/"), or the top-level file ("cli.py")."""
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__.py"
    return parts[1] + "/" if (PACKAGE / parts[1]).is_dir() else parts[1] + ".py"


def floors() -> dict[str, int]:
    """Room -> its floor, as docs/layout.md draws them ("floor 3   config.py ...")."""
    page = (PACKAGE.parent / "docs" / "layout.md").read_text()
    found = {}
    for line in page.split("```", 2)[1].splitlines():
        if line.startswith("floor "):
            number, rooms = line.split()[1], line.split()[2:]
            for room in rooms:
                if not (room.endswith("/") or room.endswith(".py")):
                    break
                found[room] = int(number)
    return found


def room_arrows(graph) -> set[tuple[str, str]]:
    return {
        (room_of(a), room_of(b))
        for a, targets in graph.items()
        for b in targets
        if b.startswith("kdsearch") and room_of(a) != room_of(b)
    }


def test_the_top_level_holds_only_the_public_face():
    assert {p.name for p in PACKAGE.glob("*.py")} == FACE
    assert all((p / "__init__.py").exists() for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__")


def arrows_not_going_down(graph, floor: dict[str, int]) -> list[str]:
    """Imports from a room to one on its own floor or above (within the face's top floor, allowed)."""
    top = max(floor.values())
    return sorted(
        f"{a} (floor {floor[a]}) -> {b} (floor {floor[b]})"
        for a, b in room_arrows(graph)
        if floor[b] >= floor[a] and not floor[a] == floor[b] == top
    )


def test_every_import_goes_down_the_floors_the_layout_page_draws():
    graph = import_graph()
    floor = floors()
    rooms = {room_of(m) for m in graph}
    assert rooms == set(floor), {"on no floor": sorted(rooms - set(floor)), "no such room": sorted(set(floor) - rooms)}
    assert not arrows_not_going_down(graph, floor)


def test_the_floor_check_catches_an_import_that_goes_up_or_sideways():
    graph = import_graph()
    graph["kdsearch.training.engine"] = graph["kdsearch.training.engine"] | {"kdsearch.sweeper.run"}
    graph["kdsearch.data.placement"] = graph["kdsearch.data.placement"] | {"kdsearch.methods.base"}
    assert arrows_not_going_down(graph, floors()) == [
        "data/ (floor 2) -> methods/ (floor 2)",
        "training/ (floor 4) -> sweeper/ (floor 8)",
    ]


def test_ray_and_mlflow_each_live_in_one_place():
    graph = import_graph()
    ray_users = sorted(m for m, t in graph.items() if "ray" in t)
    assert ray_users and all(m.startswith("kdsearch.ray_trials.") for m in ray_users), ray_users
    assert "ray" not in graph["kdsearch.search.study"]  # the study is Optuna's alone
    # (kdsearch/delivery/served_model.py is not imported by kdsearch: MLflow stores it as a
    # registered model's own code, which loads where kdsearch is not installed.)
    assert sorted(m for m, t in graph.items() if "mlflow" in t) == [
        "kdsearch.delivery.registry",
        "kdsearch.delivery.served_model",
        "kdsearch.tracking.runs",
    ]
    assert not [m for m, t in graph.items() if "kdsearch.delivery.served_model" in t]
    assert not [t for t in graph["kdsearch.delivery.served_model"] if t.startswith("kdsearch")]


def test_the_engine_imports_neither_ray_mlflow_nor_the_cli():
    graph = import_graph()
    engines = [m for m in graph if room_of(m) in ("training/", "teacher/")] + ["kdsearch.api"]
    for engine in engines:
        reached = reachable(graph, engine)
        assert not reached & {"ray", "mlflow"}, engine
        assert not {room_of(m) for m in reached if m.startswith("kdsearch")} & {
            "cli.py",
            "ray_trials/",
            "tracking/",
            "sweeper/",
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


LIBRARIES = ("ray", "optuna", "mlflow")
COMPAT = PACKAGE / "ray_trials" / "ray_internals.py"


def private_uses(tree: ast.AST) -> list[str]:
    """Where code reaches a private name of Ray, Optuna or MLflow: an import of a private module
    (``ray.x._internal``), an attribute ``obj._name`` on anything but ``self``/``cls`` (a private
    name of one of our own objects is reached through self), and, in a class built on one of
    those libraries' classes, ``self._name`` the class never sets or defines itself."""
    found = []
    library_names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                if module.split(".")[0] in LIBRARIES:
                    library_names.update(a.asname or a.name.split(".")[0] for a in node.names)
                    if any(part.startswith("_") for part in module.split(".")):
                        found.append(f"line {node.lineno}: import of {module}")
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            if not (isinstance(base, ast.Name) and base.id in ("self", "cls")):
                found.append(f"line {node.lineno}: .{node.attr}")
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        bases = {ast.unparse(b).split(".")[0] for b in cls.bases}
        if not bases & library_names:
            continue
        own = {f.name for f in cls.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
        own |= {
            t.attr
            for n in ast.walk(cls)
            if isinstance(n, (ast.Assign, ast.AnnAssign))
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"
        }
        for n in ast.walk(cls):
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "self":
                if n.attr.startswith("_") and not n.attr.startswith("__") and n.attr not in own:
                    found.append(f"line {n.lineno}: self.{n.attr}, inherited from {cls.name}'s library base")
    return found


def test_no_private_name_of_ray_optuna_or_mlflow_outside_the_compat_module():
    offences = {
        str(path.relative_to(PACKAGE.parent)): found
        for path in PACKAGE.rglob("*.py")
        if path != COMPAT and (found := private_uses(ast.parse(path.read_text())))
    }
    assert not offences, offences


def test_the_private_name_check_catches_what_it_is_for():
    """The check above, on the kinds of access the search layer used to make."""
    cases = {
        "searcher._ot_study.get_trials()": 1,
        "tuner._local_tuner._tune_config": 2,
        "from ray.air.execution._internal.actor_manager import RayActorManager": 1,
        "from ray import tune\nclass T(tune.Trainable):\n    def f(self):\n        return self._last_result": 1,
        "from ray import tune\nclass T(tune.Trainable):\n    def f(self):\n        self._mine = 1\n        return self._mine": 0,
        "class Own:\n    def f(self):\n        return self._anything": 0,
    }
    for source, count in cases.items():
        assert len(private_uses(ast.parse(source))) == count, source


def test_no_module_is_over_500_lines_and_no_function_over_60():
    sizes = {str(p.relative_to(PACKAGE.parent)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    long_modules = {p: n for p, n in sizes.items() if n > 500}
    long_functions = [
        f"{path.relative_to(PACKAGE)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60
    ]
    assert not long_modules, long_modules
    assert not long_functions, long_functions


def positional_parameters(tree: ast.AST) -> list[str]:
    """Functions taking more than 6 parameters by position (self and cls aside): past that a
    call reads as a row of values whose meaning is their order."""
    return [
        f"{node.name} ({len(names)})"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for names in [[a.arg for a in node.args.posonlyargs + node.args.args if a.arg not in ("self", "cls")]]
        if len(names) > 6
    ]


def test_no_function_takes_more_than_6_parameters_by_position():
    offences = {
        str(path.relative_to(PACKAGE)): found
        for path in PACKAGE.rglob("*.py")
        if (found := positional_parameters(ast.parse(path.read_text())))
    }
    assert not offences, offences
    assert positional_parameters(ast.parse("def f(a, b, c, d, e, f, g): pass")) == ["f (7)"]
    assert positional_parameters(ast.parse("def f(self, a, b, c, d, e, f, *, g): pass")) == []


def written_again(tree: ast.AST) -> list[str]:
    """Code that spells out an idea whose home is elsewhere: the sign or direction of a metric
    (``search/record.py``: ``sign``, ``Objective``) or an exception's first line (``errors.first_line``)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.IfExp) and isinstance(node.test, ast.Compare):
            compared = [c.value for c in node.test.comparators if isinstance(c, ast.Constant)]
            if "max" in compared or "min" in compared:
                found.append(f"line {node.lineno}: {ast.unparse(node)[:60]}")
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Call):
            call = node.value.func
            if isinstance(call, ast.Attribute) and call.attr == "splitlines" and "exc" in ast.unparse(call.value):
                found.append(f"line {node.lineno}: {ast.unparse(node)[:60]}")
    return found


def test_the_sign_of_a_metric_and_an_exceptions_first_line_have_one_home():
    homes = {PACKAGE / "search" / "record.py", PACKAGE / "errors.py"}
    offences = {
        str(path.relative_to(PACKAGE)): found
        for path in PACKAGE.rglob("*.py")
        if path not in homes and (found := written_again(ast.parse(path.read_text())))
    }
    assert not offences, offences
    assert len(written_again(ast.parse('s = 1 if mode == "max" else -1\nx = str(exc).splitlines()[0]'))) == 2


def test_the_layout_page_names_every_module_and_only_modules_that_exist():
    readme = (PACKAGE.parent / "docs" / "layout.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    named, folder = set(), ""
    for line in block.splitlines():
        head = line.split()[0] if line.strip() else ""
        if head.endswith("/") and not line.startswith(" " * 4):
            folder = "" if head == "kdsearch/" else head
            if not line.startswith("  ") and head != "kdsearch/":
                folder = None  # examples/, benchmarks/, tests/: not the package
        if folder is None:
            continue
        named |= {folder + name for name in re.findall(r"\b(\w+\.py)\b", line)}
    actual = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent == PACKAGE}
    assert named == actual, {"named, missing": sorted(named - actual), "not named": sorted(actual - named)}


def test_the_sweep_summary_formats_without_importing_mlflow():
    """summary.py formats what a sweep printed; MLflow takes seconds to import and a summary of
    a finished sweep (or kdsearch train) never needs it."""
    script = (
        "import sys\n"
        "from kdsearch.sweeper import summary\n"
        "from kdsearch.tracking.uri import ui_command\n"
        "print(ui_command('sqlite:////x/m.db', 's'))\n"
        "assert 'mlflow' not in sys.modules, 'mlflow imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "kdsearch ui --name s --tracking-uri sqlite:////x/m.db"
    assert "kdsearch.tracking.runs import" not in (PACKAGE / "sweeper" / "summary.py").read_text()
