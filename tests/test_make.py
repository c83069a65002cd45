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
