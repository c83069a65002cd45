"""What each distillation method costs a trial: its training speed against the student alone (ce).

    python benchmarks/method_speed.py            # Fashion-MNIST subset, resnet56 teacher -> resnet8 student
    python benchmarks/method_speed.py --quick    # digits, a second a run (what CI runs)

For every registered method, with its default settings: the training steps' images/s with the
live teacher and with the sweep's shared teacher outputs (where it reads a teacher), each
divided by the images/s of a ce run made just before it (ratios of neighbouring runs: this
shared machine drifts by +/-14% from one minute to the next), medians over --repeats rounds;
and the bytes per training image the shared outputs take for what the method reads (fp16, one
epoch). Goal (issue 39): a method that can run from the shared outputs does so at >= 0.85x ce's
speed. Writes benchmarks/results/method-speed-<device>[-quick].{md,json}.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

from kdsearch import TrainConfig, fit
from kdsearch.data import load_dataset
from kdsearch.methods import METHODS, method_class
from kdsearch.models import build_model
from kdsearch.models.checkpoint import model_spec
from kdsearch.runtime.device import resolve_device, set_threads
from kdsearch.teacher.outputs import compute_shared_outputs
from kdsearch.teacher.weights import Teacher

ROOT = Path(__file__).resolve().parent
GOAL = 0.85


def images_per_second(history: list[dict], n: int) -> float:
    """Over the training steps of the epochs after the first (warm-up)."""
    epochs = history[1:] or history
    return n * len(epochs) / sum(h["time/epoch_train_s"] for h in epochs)


def untrained_teacher(arch: str, data) -> Teacher:
    # Speed does not depend on the weights: an untrained teacher costs the same forward pass.
    model = build_model(arch, data.num_outputs, data.in_channels, "cifar", 1.0)
    return Teacher(model, arch, {}, None, model_spec(arch, data.num_outputs, data.in_channels, "cifar", 1.0))


def run(cfg: TrainConfig, data, teacher, outputs=None) -> float:
    history = fit(cfg, data=data, teacher=teacher, teacher_outputs=outputs, measure_speed=False, evaluate_test=False).history
    return images_per_second(history, len(data.train_x))


def measure(base: dict, data, teacher: Teacher, repeats: int, threads: int) -> dict:
    n = len(data.train_x)
    out = {}
    for name in METHODS:
        cfg = TrainConfig(**base, method=name, threads=threads)
        reads = method_class(name).reads_for(cfg.method_args)
        outputs = compute_shared_outputs(teacher, data, cfg, lambda _: None) if reads.needs_teacher else None
        row = {"reads": sorted(reads.teacher), "bytes_per_image": outputs.nbytes() / (cfg.epochs * n) if outputs else 0}
        rounds = []
        for _ in range(repeats):
            ce = run(TrainConfig(**base, method="ce", threads=threads), data, None)
            live = run(cfg, data, teacher)
            cached = run(cfg, data, teacher, outputs) if outputs is not None else None
            rounds.append({"ce": ce, "live": live, "cached": cached})
        row["rounds"] = rounds
        row["live_ratio"] = statistics.median(r["live"] / r["ce"] for r in rounds)
        row["cached_ratio"] = statistics.median(r["cached"] / r["ce"] for r in rounds) if outputs is not None else None
        row["live"] = statistics.median(r["live"] for r in rounds)
        row["cached"] = statistics.median(r["cached"] for r in rounds) if outputs is not None else None
        out[name] = row
        cached = f", shared outputs {row['cached_ratio']:.2f}x" if outputs is not None else ""
        print(f"{name}: live {row['live_ratio']:.2f}x ce{cached}", flush=True)
    return out


def write(results: dict, out: Path) -> None:
    stem = f"method-speed-{results['device']}" + ("-quick" if results["quick"] else "")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    lines = [
        f"# What each method costs a trial ({results['dataset']}, {results['images']:,} training images, "
        f"{results['student']} <- {results['teacher']}, {results['device']}, {results['threads']} threads)",
        "",
        "Written by `benchmarks/method_speed.py`"
        + (" --quick" if results["quick"] else "")
        + f" ({results['repeats']} rounds; medians of each method's images/s over a ce run's just before it).",
        "",
        "| method | reads of the teacher | shared outputs, bytes an image an epoch | live, x ce | shared outputs, x ce | goal >= 0.85x from the shared outputs |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for name, row in results["methods"].items():
        cached = row["cached_ratio"]
        goal = "n/a (no teacher)" if cached is None else ("holds" if cached >= GOAL else "MISSED")
        lines.append(
            f"| `{name}` | {', '.join(row['reads']) or '-'} | {row['bytes_per_image']:,.0f} | {row['live_ratio']:.2f} | "
            f"{'-' if cached is None else f'{cached:.2f}'} | {goal} |"
        )
    lines += ["", f"Python {platform.python_version()}, torch {torch.__version__}."]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / stem}.md")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="digits, short: the CI setting")
    parser.add_argument("--repeats", type=int, help="rounds per method (default 2; --quick: 1)")
    parser.add_argument("--out", default=str(ROOT / "results"))
    args = parser.parse_args()
    threads = set_threads(None)
    device = resolve_device("auto")
    if args.quick:
        base = dict(dataset="digits", student="resnet8", teacher="resnet56", epochs=3, batch_size=128, lr=0.05)
        data = load_dataset("digits")
    else:
        base = dict(dataset="fashion_mnist", student="resnet8", teacher="resnet56", epochs=3, batch_size=128, train_subset=3000)
        data = load_dataset("fashion_mnist", train_subset=3000)
    teacher = untrained_teacher(base["teacher"], data)
    repeats = args.repeats or (1 if args.quick else 2)
    results = {
        "device": device.type,
        "threads": threads,
        "quick": args.quick,
        "repeats": repeats,
        "dataset": data.name,
        "images": len(data.train_x),
        "student": base["student"],
        "teacher": base["teacher"],
        "methods": measure(base, data, teacher, repeats, threads),
    }
    write(results, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
