"""The versions kdsearch was last tested with: written from the environment this runs in.

    python benchmarks/versions.py            # writes benchmarks/results/versions.{md,json}

Run it in the environment `make test` just passed in (`.venv/bin/python benchmarks/versions.py`);
the README quotes the file, and tests/test_readme.py checks that the quote matches it.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "torchvision", "ray", "optuna", "mlflow", "numpy", "pandas", "scikit-learn", "onnxruntime", "pyarrow")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def write(out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    record = {"date": time.strftime("%Y-%m-%d"), "versions": versions()}
    (out / "versions.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "# Versions kdsearch was last tested with",
        "",
        f"Written by `benchmarks/versions.py` on {record['date']}, in the environment the full test suite passed in.",
        "",
        "| package | version |",
        "| --- | --- |",
        *(f"| {name} | {version} |" for name, version in record["versions"].items()),
        "",
    ]
    (out / "versions.md").write_text("\n".join(lines))
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    record = write(args.out)
    print(", ".join(f"{k} {v}" for k, v in record["versions"].items()))


if __name__ == "__main__":
    main()
