"""What a sweep of thousands of trials costs after its trials: `kdsearch report` and `kdsearch sync`
(every trial's epochs into an empty MLflow store), at 100, 500 and 2,000 trials.

    python benchmarks/large_sweep_io.py                 # 100 500 2000 trials of 5 epochs, about 10 minutes here
    python benchmarks/large_sweep_io.py --quick         # 20 and 100 trials (CI)

A real 2-trial digits sweep is run once; its folder is then grown to N trials by writing trial
folders as Ray Tune leaves them (params.json, result.json: a line per epoch, with the metrics a
real trial reports), each with its own settings and accuracies. Goals (issue 31): the report of
2,000 trials in <= 10 s; sync of 2,000 trials to an empty store in <= 60 s, every trial once,
every epoch once. Writes benchmarks/results/large-sweep-io{,-quick}.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPACE = """name: big
fixed: {method: kd, dataset: digits, teacher: resnet8, teacher_epochs: 1, student: resnet8, epochs: EPOCHS}
space:
  temperature: {loguniform: [1, 10]}
  alpha: {uniform: [0.3, 0.9]}
search: {num_samples: 2, scheduler: fifo, sampler: random, seed: 0}
"""


def real_sweep(work: Path, epochs: int) -> Path:
    (work / "big.yaml").write_text(SPACE.replace("EPOCHS", str(epochs)))
    cmd = [sys.executable, "-m", "kdsearch", "sweep", str(work / "big.yaml"), "--storage", str(work / "sweeps")]
    cmd += [
        "--tracking-uri",
        f"sqlite:///{work / 'first.db'}",
        "--quiet",
        "--no-register",
        "--set",
        f"cache_dir={work / 'cache'}",
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=work)
    return work / "sweeps" / "big"


def grow(template: Path, dest: Path, trials: int, seed: int = 0, epochs: int | None = None) -> None:
    """``template``'s sweep folder with ``trials`` trials: its own and generated ones, each with the
    epochs of its first trial (its first ``epochs`` of them, when given)."""
    shutil.copytree(template, dest)
    first = next(template.glob("trial_*"))
    params = json.loads((first / "params.json").read_text())
    rows = [json.loads(line) for line in (first / "result.json").read_text().splitlines()][:epochs]
    rng = random.Random(seed)
    for i in range(trials - len(list(template.glob("trial_*")))):
        trial = dest / f"trial_{i:08x}x"
        trial.mkdir()
        mine = {**params, "temperature": rng.uniform(1, 10), "alpha": rng.uniform(0.3, 0.9)}
        (trial / "params.json").write_text(json.dumps(mine))
        lines = []
        for row in rows:
            acc = min(1.0, max(0.0, row["val/acc"] + rng.gauss(0, 0.02)))
            lines.append(json.dumps({**row, "val/acc": acc, "trial/score": acc, "trial_id": trial.name[6:], "config": mine}))
        (trial / "result.json").write_text("\n".join(lines) + "\n")


def measure(folder: Path, work: Path) -> dict:
    from mlflow import MlflowClient

    from kdsearch.search.folder import SweepFolder
    from kdsearch.sweeper.mirror import sync_sweep
    from kdsearch.sweeper.report import build_report

    started = time.perf_counter()
    report = build_report(folder)
    report_s = time.perf_counter() - started
    uri = f"sqlite:///{work / f'sync-{folder.parent.name}.db'}"
    started = time.perf_counter()
    synced = sync_sweep(SweepFolder(folder), tracking_uri=uri)
    sync_s = time.perf_counter() - started
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("big")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`kdsearch.role` = 'trial'", max_results=50000)
    ids = [r.data.tags.get("kdsearch.trial_id") for r in runs]
    sample = runs[: min(20, len(runs))]
    epochs_each = sorted({len(client.get_metric_history(r.info.run_id, "val/acc")) for r in sample})
    return {
        "trials": len(report["table"]),
        "report_s": report_s,
        "sync_s": sync_s,
        "mlflow_trial_runs": len(runs),
        "distinct_trial_ids": len(set(ids)),
        "val_acc_points_per_run_sampled": epochs_each,
        "epochs_added": synced["epochs_added"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="20 and 100 trials of 2 epochs")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    if args.quick:
        args.trials, args.epochs = [20, 100], 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="kdsearch-large-io-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("KDSEARCH_CACHE", str(work / "cache"))
        template = real_sweep(work, args.epochs)
        for n in args.trials:
            folder = work / f"n{n}" / "big"
            grow(template, folder, n)
            row = {"epochs_per_trial": args.epochs, **measure(folder, work)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(folder.parent)
    name = "large-sweep-io-quick" if args.quick else "large-sweep-io"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    (out / f"{name}.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    top = rows[-1]
    ok_report = "holds" if top["report_s"] <= 10 else "MISSED"
    ok_sync = "holds" if top["sync_s"] <= 60 else "MISSED"
    once = all(r["mlflow_trial_runs"] == r["distinct_trial_ids"] == r["trials"] for r in rows)
    lines = [
        f"# A finished sweep of many trials: report and sync (benchmarks/large_sweep_io.py{' --quick' if args.quick else ''})",
        "",
        f"Machine: {machine}. Each sweep folder: a real 2-trial digits sweep grown to N trials of {args.epochs} epochs "
        "(params.json and result.json as Ray Tune writes them).",
        "",
        "| trials | kdsearch report s | kdsearch sync s (empty sqlite store) | MLflow trial runs (distinct) | val/acc points per run |",
        "| --- | --- | --- | --- | --- |",
        *[
            f"| {r['trials']} | {r['report_s']:.1f} | {r['sync_s']:.1f} | {r['mlflow_trial_runs']} ({r['distinct_trial_ids']}) "
            f"| {', '.join(map(str, r['val_acc_points_per_run_sampled']))} |"
            for r in rows
        ],
        "",
        f"Goals at {top['trials']} trials: report <= 10 s: **{ok_report}** ({top['report_s']:.1f} s); "
        f"sync <= 60 s: **{ok_sync}** ({top['sync_s']:.1f} s); every trial in MLflow once: **{'holds' if once else 'MISSED'}**.",
    ]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
