"""The README's and docs/' commands and flags are the CLI's: a command they show that the CLI
refuses, or a flag they name that no command has, fails here (the README once showed a sweep
--data-dir that did not exist). Every number next to a link to a result file is in that file,
as the quantity it is quoted as: the row and column of the file's table that the words around
it name."""

import re
import shlex
from pathlib import Path

import pytest
import torch
from conftest import write_cifar10, write_fashion_mnist, write_image_folder
from torchvision.models import resnet18

from kdsearch.cli import build_parser, main
from kdsearch.search.space import load_sweep

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
PAGES = {"README.md": README} | {f"docs/{p.name}": p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))}
ALL_TEXT = "\n".join(PAGES.values())
COMMANDS = [
    line.strip()
    for block in re.findall(r"```bash\n(.*?)```", ALL_TEXT, flags=re.S)
    for line in block.splitlines()
    if line.strip().startswith("kdsearch ")
]
# Flags the README names that belong to other programs (benchmarks, Ray, pip, make).
OTHER_TOOLS = {
    "--work",
    "--env-manager",  # mlflow models serve
    "--tiny",
    "--quick",
    "--out",
    "--head",
    "--num-cpus",
    "--smoke-test",
    "--revs",
    "--trials",
    "--many",
    "--noise",
    "--repeats",
    "--retrain-picks",
    "--reuse-only",
    "--concurrency",  # benchmarks/search_efficiency.py
}


def test_the_readme_shows_commands():
    assert len(COMMANDS) >= 20 and any(c.startswith("kdsearch sweep") for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_the_readme_shows_parses(command):
    args = shlex.split(command, comments=True)[1:]
    try:
        build_parser().parse_args(args)
    except SystemExit as exc:
        if exc.code == 0 and "--help" in args:
            return
        pytest.fail(f"README command refused by the CLI (exit {exc.code}): {command}")
    for space in [a for a in args if a.startswith("search_spaces/")]:
        overrides = {"data_dir": "/data"} if "--data-dir" in args else None
        assert load_sweep(ROOT / space, overrides).space


def _all_flags() -> set[str]:
    flags = set()
    parser = build_parser()
    for action in parser._subparsers._group_actions:  # the subcommands
        for sub in action.choices.values():
            for option in sub._actions:
                flags.update(option.option_strings)
    return flags


def test_every_flag_the_readme_names_exists():
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", ALL_TEXT))
    unknown = sorted(named - _all_flags() - OTHER_TOOLS)
    assert not unknown, f"the README names flags no kdsearch command has: {unknown}"


@pytest.mark.slow
def test_the_readme_train_and_teacher_commands_run_on_stand_in_data(tmp_path, monkeypatch, capsys):
    # Each `kdsearch train` / `teacher` command as shown, shortened to one epoch, with small
    # files in the real formats where it reads ~/data (run in this process: the CLI's main).
    write_cifar10(tmp_path / "data")
    write_fashion_mnist(tmp_path / "fashion_mnist", n_train=120)
    (tmp_path / "run.yaml").write_text("method: ce\ndataset: digits\nepochs: 1\n")
    # "Your own models and data": the user's module, an image folder, torchvision's weights file
    (tmp_path / "mynets.py").write_text(
        "from torch import nn\n\n\nclass TinyNet(nn.Sequential):\n"
        "    def __init__(self, num_classes, in_channels, width=8):\n"
        "        super().__init__(nn.Conv2d(in_channels, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
        "                         nn.Linear(width, num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    write_image_folder(tmp_path / "images")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(resnet18().state_dict(), tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    monkeypatch.setenv("KDSEARCH_DATA", str(tmp_path / "fashion_mnist"))
    monkeypatch.setenv("KDSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    for command in [c for c in COMMANDS if c.startswith(("kdsearch train", "kdsearch teacher")) and "--help" not in c]:
        args = [a.replace("~/data", str(tmp_path / "data")) for a in shlex.split(command, comments=True)[1:]]
        args += ["--epochs", "1", "--teacher-epochs", "1"] + ([] if "--json" in args else ["--quiet"])
        code = main(args)
        assert code == 0, f"{command}\n{capsys.readouterr().err[-1500:]}"


def test_the_versions_the_readme_says_were_tested_are_those_in_the_result_file():
    import json

    recorded = json.loads((ROOT / "benchmarks" / "results" / "versions.json").read_text())["versions"]
    sentence = README.split("Last tested with", 1)[1].split("([versions.md]", 1)[0]
    quoted = dict(re.findall(r"(Ray|Optuna|MLflow|torch|Python) (\d+\.\d+\.\d+)", sentence))
    assert quoted.keys() == {"Ray", "Optuna", "MLflow", "torch", "Python"}, sentence
    assert {k.lower(): v for k, v in quoted.items()} == {k: recorded[k] for k in ("ray", "optuna", "mlflow", "torch", "python")}


NUMBER = re.compile(r"(?<![\w./,])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?=%|x\b|[\s,;:)\]]|\.(?:\s|$)|$)")
LINK = re.compile(r"\]\(((?:\.\./)?benchmarks/results/[^)#\s]+)\)")


def _numbers(text: str) -> set[str]:
    """The figures in a text, commas dropped: decimals, and integers of 3 or more digits (small
    counts such as '3 seeds' or '2 cores' are not results)."""
    out = set()
    for whole, frac in NUMBER.findall(text):
        digits = whole.replace(",", "")
        if frac or len(digits) >= 3:
            out.add(digits + (frac or ""))
    return out


def _quotes():
    """(page, paragraph, the result files it links) for each paragraph that links a result file,
    and for the table or paragraph after one that ends with a colon; fenced code is left out."""
    for page, text in PAGES.items():
        text = re.sub(r"```.*?```", "", text, flags=re.S)
        carried = set()
        for paragraph in re.split(r"\n\s*\n", text):
            here = {
                (ROOT / "docs" / f).resolve() if page.startswith("docs/") else (ROOT / f).resolve()
                for f in LINK.findall(paragraph)
            }
            files = here or carried
            if files:
                yield page, paragraph, files
            carried = here if here and paragraph.rstrip().endswith(":") else set()


def test_every_number_beside_a_result_file_is_in_that_file():
    checked, wrong = 0, []
    for page, paragraph, files in _quotes():
        sources = [f for f in files if f.is_file()]
        assert len(sources) == len(files), f"{page} links a result file that does not exist: {sorted(map(str, files))}"
        if not all(f.suffix in (".md", ".json", ".csv", ".txt") for f in sources):
            continue  # a linked plot
        found = set().union(*(_numbers(f.read_text()) for f in sources))
        quoted = _numbers(re.sub(r"`[^`]*`", "", LINK.sub("", paragraph)))  # inline code holds settings, not results
        checked += len(quoted)
        wrong += [
            f"{page}: {n} (not in {', '.join(f.name for f in sources)}): ...{paragraph[:80]!r}" for n in sorted(quoted - found)
        ]
    assert checked >= 40, checked  # the pages do quote results
    assert not wrong, "\n".join(wrong)


STOP = set(
    "the a an of at in on to and or s its is it for by with vs per as be are was were this that from than over each".split()
)


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > 4 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def _words(text: str) -> set[str]:
    """What names a row or a column: the words and whole numbers (a one-word label, say the
    method 'at', is itself), without values, remarks in parentheses or filler words."""
    if re.fullmatch(r"\s*\**\s*[A-Za-z]+\s*\**\s*", text):
        return {text.strip(" *").lower()}
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text.lower())
    text = re.sub(r"\d+\.\d+|\([^)]*\)", " ", text)
    return {_stem(w) for w in re.findall(r"[a-z0-9]+", text) if w not in STOP}


def _tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every Markdown table in ``text``: (header cells, rows of cells)."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].lstrip().startswith("|") and i + 1 < len(lines) and re.match(r"^\s*\|\s*-{3}", lines[i + 1]):
            j = i + 2
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                j += 1
            cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines[i:j]]
            out.append((cells[0], cells[2:]))
            i = j
        else:
            i += 1
    return out


def _is_value(cell: str) -> bool:
    bare = re.sub(r"\([^)]*\)|\*|holds|missed", "", cell.lower())
    return bool(_numbers(cell)) and not re.search(r"[a-z]{3,}", bare)


def _label(row: list[str]) -> set[str]:
    """A row's name: its first cell, its words and its whole numbers (trials, trials at once)."""
    return _words(" ".join(c for k, c in enumerate(row) if k == 0 or not _is_value(c) or re.fullmatch(r"\d[\d,]*", c)))


class _Source:
    """The numbers of a result file, each where it stands: a table's cell (its row's label, its
    column's header) or a line of text."""

    def __init__(self, text: str):
        self.cells, self.lines = [], []
        for headers, rows in _tables(text):
            labels, columns = [_label(r) for r in rows], [_words(h) for h in headers]
            for r, row in enumerate(rows):
                for k, cell in enumerate(row[: len(headers)]):
                    self.cells += [(n, labels, r, columns, k) for n in _numbers(cell)]
        self.lines = [(_numbers(line), _words(line)) for line in text.splitlines() if not line.lstrip().startswith("|")]

    def names(self, n: str, row_words: set[str], column_words: set[str]) -> bool:
        """Whether ``n`` stands here where the words name it: in the row that shares the most
        words with ``row_words`` (they must name one) and the column that shares the most with
        ``column_words`` (any, when they name none; a row's label is its own column); or on a
        line of text that shares a word with them."""
        for value, labels, r, columns, k in self.cells:
            if value != n:
                continue
            rows = [len(row_words & label) for label in labels]
            cols = [len(column_words & c) for c in columns]
            if rows[r] == max(rows) > 0 and (k == 0 or len(column_words & columns[k]) == max(cols)):
                return True
        return any(n in numbers and words & row_words for numbers, words in self.lines)


def _misquoted(page: str, paragraph: str, source: _Source) -> list[str]:
    """The numbers of ``paragraph`` that ``source`` does not hold where their words say."""
    body = re.sub(r"(?<=\d),(?=\d{3})", "", re.sub(r"`[^`]*`", "", LINK.sub("", paragraph)))
    wrong = []
    for headers, rows in _tables(body):  # a table: its row's label and its column's header
        for row in rows:
            for k, cell in enumerate(row[: len(headers)]):
                for n in _numbers(cell):
                    if not source.names(n, _label(row), _words(headers[k])):
                        wrong.append(f"{page}: {n} (row {row[0]!r}, column {headers[k]!r})")
    prose = "\n".join(line for line in body.splitlines() if not line.lstrip().startswith("|"))
    for sentence in re.split(r"(?<=[.!?])\s+", prose):  # prose: its clause, else its sentence
        for clause in re.split(r"[,;:()]|\band\b|\bagainst\b|\bvs\b", sentence):
            for n in _numbers(clause):
                if not any(source.names(n, _words(text), _words(text)) for text in (clause, sentence)):
                    wrong.append(f"{page}: {n} in {' '.join(clause.split())!r}")
    return wrong


def test_every_number_beside_a_result_file_is_the_quantity_it_is_quoted_as():
    """A number copied from the wrong row or column (a 'best seen' quoted as a 'pick', the 500-trial
    figure as the 2,000-trial one) is found in the file but not where the words around it point."""
    wrong, checked = [], 0
    for page, paragraph, files in _quotes():
        texts = [f.read_text() for f in files if f.suffix == ".md"]
        if texts:
            checked += 1
            wrong += _misquoted(page, paragraph, _Source("\n".join(texts)))
    assert checked >= 15, checked
    assert not wrong, "\n".join(wrong)


def test_the_quantity_check_catches_a_number_from_the_wrong_row_or_column():
    source = _Source(
        "| strategy | at once | best seen at 4x | its pick at 4x |\n| --- | --- | --- | --- |\n"
        "| tpe+asha | 32 | 85.19% | 79.69% |\n| random | 32 | 84.43% | 78.49% |\n| tpe+asha | 2 | 85.33% | 79.05% |\n"
    )
    assert not _misquoted("p", "tpe+asha at 32 at once, its pick at 4x: 79.69%", source)
    assert _misquoted("p", "tpe+asha at 32 at once, its pick at 4x: 85.19%", source)  # the best seen
    assert _misquoted("p", "random search at 32 at once, its pick at 4x: 79.69%", source)  # TPE's
    assert _misquoted("p", "tpe+asha at 2 at once, its pick at 4x: 79.69%", source)  # at 32 at once
    assert not _misquoted("p", "| strategy | its pick |\n| --- | --- |\n| **tpe+asha** | 79.69% |", source)
    assert _misquoted("p", "| strategy | best seen |\n| --- | --- |\n| **tpe+asha** | 79.69% |", source)


def test_the_docs_state_no_count_of_tests():
    assert not re.findall(r"\b\d+ tests\b", ALL_TEXT)


def test_every_whole_search_space_the_pages_show_loads(tmp_path):
    """A YAML block with a name, fixed settings and a space is a space a user will copy: it loads."""
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", ALL_TEXT, flags=re.S) if re.search(r"^name:", b, flags=re.M)]
    assert len(blocks) >= 2
    for i, block in enumerate(blocks):
        path = tmp_path / f"space{i}.yaml"
        path.write_text(block)
        assert load_sweep(path, {"data_dir": "/data"}).space, block
