"""Which default lr schedule: cosine from the peak, cosine after a linear warmup, or one-cycle.

    python benchmarks/schedule.py            # about 15 minutes on 2 CPU cores (one thread a run)

Short runs (a deep teacher for 6 epochs on 2,000 Fashion-MNIST images, the smoke and ASHA case)
and full-length ones (digits' preset teacher and student, 30 epochs), two seeds each. The
default is chosen on **validation** accuracy (the mean over runs and seeds); test accuracy is
read once per run, to report. Writes benchmarks/results/schedule.{md,csv,json}; the JSON's
``chosen`` is TrainConfig's default schedule (tests/test_config.py checks they agree).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kdsearch import TrainConfig, fit  # noqa: E402
from kdsearch.api import load_data  # noqa: E402

ROOT = Path(__file__).resolve().parent
SCHEDULES = {
    "cosine": dict(schedule="cosine", warmup=0.0),
    "cosine + 5% warmup": dict(schedule="cosine", warmup=0.05),
    "cosine + 15% warmup": dict(schedule="cosine", warmup=0.15),
    "onecycle": dict(schedule="onecycle"),
}
RUNS = {
    "short teacher: resnet56, fashion_mnist 2,000 images, 6 epochs": dict(
        dataset="fashion_mnist", student="resnet56", epochs=6, train_subset=2000
    ),
    "short student: resnet8, fashion_mnist 2,000 images, 6 epochs": dict(
        dataset="fashion_mnist", student="resnet8", epochs=6, train_subset=2000
    ),
    "full teacher: resnet20, digits, 30 epochs": dict(dataset="digits", student="resnet20", epochs=30),
    "full student: resnet8, digits, 30 epochs": dict(dataset="digits", student="resnet8", epochs=30),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "results"))
    args = parser.parse_args()
    rows = []
    for run, settings in RUNS.items():
        data = load_data(TrainConfig(method="ce", **settings))
        for name, schedule in SCHEDULES.items():
            accs, vals, first = [], [], []
            for seed in range(args.seeds):
                cfg = TrainConfig(method="ce", threads=1, seed=seed, **settings, **schedule)
                started = time.perf_counter()
                result = fit(cfg, data=data, measure_speed=False)
                accs.append(result.metrics["test/acc"])
                vals.append(result.metrics["val/acc"])
                first.append(result.history[0]["train/loss"])
                print(
                    f"{run} | {name} | seed {seed}: val {vals[-1]:.4f}, test {accs[-1]:.4f}, epoch-1 loss {first[-1]:.3f} ({time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
            row = {"run": run, "schedule": name, "val_acc_mean": statistics.mean(vals), "val_acc_min": min(vals)}
            row.update(test_acc_mean=statistics.mean(accs), test_acc_min=min(accs))
            rows.append({**row, "first_epoch_loss": statistics.mean(first), "seeds": args.seeds})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "schedule.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    by_schedule = {name: statistics.mean(r["val_acc_mean"] for r in rows if r["schedule"] == name) for name in SCHEDULES}
    chosen = max(by_schedule, key=by_schedule.get)
    summary = {"chosen": SCHEDULES[chosen], "chosen_name": chosen, "mean_val_acc": by_schedule, "rows": rows}
    (out / "schedule.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        "# Learning-rate schedules",
        "",
        f"Chosen on validation accuracy (mean over the {len(RUNS)} runs and {args.seeds} seeds): **{chosen}**. "
        "Test accuracy is read once per run, to report.",
        "",
        "| schedule | mean val acc over runs |",
        "| --- | --- |",
        *[f"| {name} | {100 * v:.2f}% |" for name, v in by_schedule.items()],
        "",
        "| run | schedule | val acc (mean) | val acc (worst seed) | test acc (mean) | test acc (worst seed) | epoch-1 train loss |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['run']} | {r['schedule']} | {100 * r['val_acc_mean']:.2f}% | {100 * r['val_acc_min']:.2f}% "
        f"| {100 * r['test_acc_mean']:.2f}% | {100 * r['test_acc_min']:.2f}% | {r['first_epoch_loss']:.3f} |"
        for r in rows
    ]
    (out / "schedule.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
