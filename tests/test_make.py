"""The README's own commands on a machine that lacks what they need."""

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_make_test_without_chromium_and_without_root_says_how_in_one_line(tmp_path):
    # A PATH with no chromium and an `id` that answers like an ordinary user: make cannot
    # install the browser, so it stops before any test with the command that would.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "id").write_text("#!/bin/sh\necho 1000\n")
    (bin_dir / "id").chmod(0o755)
    make = shutil.which("make")
    proc = subprocess.run(
        [make, "-s", "-C", str(ROOT), "browser"], capture_output=True, text=True, env={**os.environ, "PATH": str(bin_dir)}
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and "the MLflow UI test needs Chromium: run 'sudo apt-get install chromium chromium-driver', then make test" in lines[0]
    )
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_make_demo_runs_the_quickstart_sweep_and_continues_it_when_run_again(tmp_path):
    # `make -n` prints what `make demo` would run, in a copy of the Makefile with its venv made.
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / ".venv").mkdir()
    os.utime(tmp_path / "pyproject.toml", (0, 0))
    (tmp_path / ".venv" / ".installed").write_text("")

    def planned():
        proc = subprocess.run([shutil.which("make"), "-n", "-C", str(tmp_path), "demo"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return [line.split() for line in proc.stdout.splitlines() if "kdsearch" in line and "sweep" in line]

    assert planned() == [[".venv/bin/kdsearch", "sweep", "search_spaces/quickstart.yaml"]]
    (tmp_path / "sweeps" / "quickstart").mkdir(parents=True)
    (tmp_path / "sweeps" / "quickstart" / "sweep.json").write_text("{}")  # a first `make demo` ran
    assert planned() == [[".venv/bin/kdsearch", "sweep", "search_spaces/quickstart.yaml", "--resume"]]
