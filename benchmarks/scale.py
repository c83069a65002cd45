"""Data at size (issue 30): memory of 1 and 4 trials at once by placement, streamed against
in-memory training speed, and the bytes a trial's checkpoints write.

    python benchmarks/scale.py            # CelebA's 162,770 training images at 3x16x16 (~20 minutes on 2 CPU cores)
    python benchmarks/scale.py --quick    # 20,000 images (CI)

1. **Memory**: sweeps of one-epoch trials (resnet8, CE) on synthetic uint8 images, 1 and then 4
   trials at once, with ``data_placement`` device (each trial holds a padded copy), host (the
   node's one copy in Ray's object store, shared) and stream (memory-mapped files: the pages a
   trial reads are the page cache's, shared and reclaimable); the peak proportional set size
   (PSS: shared pages counted once in all) of the driver and every process it started, sampled
   every 0.2 s.
   The same with 2,000 images gives what a trial costs without its data. Each figure is the least
   of ``--repeats`` sweeps (a peak sampled every 0.2 s only ever overshoots: the noise is ~50 MB).
   Goal: with host placement, 4 trials take at most 1.3x one trial's data more than 1 trial does,
   beyond what 3 more trials cost without data ("adding trials adds only their models and batches").
2. **Speed**: training steps of resnet8 at batch 256 on 3x32x32 images, the data on the device
   (in memory), in the host copy, and streamed from memory-mapped files: images/s, the second
   epoch's training steps. Goal: streamed >= 0.8x in memory.
3. **An image folder, as a user trains on it**: the peak RSS and anonymous memory of `kdsearch train` (one epoch, CE,
   its own process) on PNGs at 64x64, with the folder in memory (device), streamed because it
   was asked for (``--data-placement stream``: decoded straight to disk, a chunk at a time), and
   streamed because it is over ``data_memory_gb``. Goal: streaming asked for holds at its peak no
   more anonymous memory than streaming past the limit (+ 0.25x the data), and less than the
   in-memory run (the pages of the mapped file are the page cache's: shared, reclaimable).
4. **Checkpoint bytes**: a sweep of 2 trials of 6 epochs under ASHA (rung at epoch 3), checkpointed
   every epoch (``checkpoint_every: 1``, as kdsearch did before issue 30) and by default (ASHA's rungs
   and the end): bytes written per trial, and of them the student files, written at a trial's end only
   (every checkpoint is kept, so what is on disk is what was written).

Writes benchmarks/results/scale{,-quick}.{md,json}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent


def synthetic(n: int, size: int, classes: int = 10, seed: int = 0):
    """Images that a small network learns something from: class-dependent mean brightness."""
    from kdsearch.data import DatasetSplits

    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    base = (y.float() * (200 / classes)).view(-1, 1, 1, 1)
    x = (base + torch.randint(0, 56, (n, 3, size, size), generator=g)).clamp(0, 255).to(torch.uint8)
    return DatasetSplits.from_tensors(x, y, class_names=[str(i) for i in range(classes)])


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakMemory:
    """The peak PSS of this process and all it started (Ray's raylet, workers, object store)."""

    def __init__(self, every_s: float = 0.2):
        self.peak, self.every_s, self._stop = 0, every_s, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(_pss(p) for p in _descendants(os.getpid())))
            self._stop.wait(self.every_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class OwnPeak(PeakMemory):
    """The peak resident memory of this process alone."""

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            self._stop.wait(self.every_s)


def sweep_memory(data, trials: int, placement: str, work: Path, run: int = 0) -> dict:
    import ray

    from kdsearch.sweeper.run import SweepOptions, run_sweep

    name = f"mem-{placement}-{trials}-{len(data.train_x)}-{run}"
    space = work / f"{name}.yaml"
    fixed = {"method": "ce", "student": "resnet8", "epochs": 1, "crop_pad": 2, "flip": True, "batch_size": 256}
    fixed.update(data_placement=placement, cache_dir=str(work / "cache"))
    search = {"num_samples": trials, "sampler": "random", "scheduler": "fifo", "seed": 0}
    space.write_text(
        yaml.safe_dump({"name": name, "fixed": fixed, "space": {"lr": {"loguniform": [0.03, 0.1]}}, "search": search})
    )
    opts = SweepOptions(
        storage=str(work / "s"),
        tracking_uri=f"sqlite:///{work / 'm.db'}",
        verbose=0,
        register=False,
        max_concurrent=trials,
        cpus_per_trial=2 / trials,
        data=data,
    )
    said: list[str] = []
    with PeakMemory() as peak:
        run_sweep(space, opts, log=said.append)
    if ray.is_initialized():
        ray.shutdown()
    line = next((s for s in said if s.startswith("data placement:")), "")
    return {
        "placement": placement,
        "trials": trials,
        "images": len(data.train_x),
        "peak_pss_mb": peak.peak / 1024**2,
        "line": line,
    }


def step_speed(data, placement: str, work: Path) -> float:
    from kdsearch import TrainConfig, fit

    cfg = TrainConfig.from_dict(
        {"method": "ce", "dataset": "digits", "student": "resnet8", "epochs": 2, "batch_size": 256, "crop_pad": 4, "flip": True,
         "threads": 2, "data_placement": placement, "cache_dir": str(work / "cache")}
    )  # fmt: skip
    result = fit(cfg, data=data, measure_speed=False, evaluate_test=False)
    last = result.history[-1]
    return len(data.train_x) / last["time/epoch_train_s"]


def checkpoint_bytes(work: Path, every: int | None) -> dict:
    from kdsearch.search.folder import load_trials
    from kdsearch.sweeper.run import SweepOptions, run_sweep

    name = f"ckpt-{every or 'rungs'}"
    space = work / f"{name}.yaml"
    search = {"num_samples": 2, "sampler": "random", "scheduler": "asha", "grace_period": 3, "seed": 0}
    if every:
        search["checkpoint_every"] = every
    fixed = {
        "method": "kd",
        "dataset": "digits",
        "teacher": "resnet20",
        "student": "resnet8",
        "epochs": 6,
        "cache_dir": str(work / "cache"),
    }
    space.write_text(
        yaml.safe_dump({"name": name, "fixed": fixed, "space": {"lr": {"loguniform": [0.03, 0.1]}}, "search": search})
    )
    opts = SweepOptions(storage=str(work / "s"), tracking_uri=f"sqlite:///{work / 'm.db'}", verbose=0, register=False)
    run_sweep(space, opts, log=lambda _: None)
    rows = []
    for t in load_trials(work / "s" / name):
        folders = sorted(Path(t.path).glob("checkpoint_*"))
        files = [f for folder in folders for f in folder.rglob("*") if f.is_file()]
        students = [f for f in files if f.name == "student.pt"]
        rows.append(
            {
                "epochs": len(t.history),
                "checkpoints": len(folders),
                "student_files": len(students),
                "bytes": sum(f.stat().st_size for f in files),
                "student_bytes": sum(f.stat().st_size for f in students),
            }
        )
    per_trial = {k: sum(r[k] for r in rows) / len(rows) for k in ("bytes", "student_bytes")}
    return {
        "checkpoint_every": every,
        "trials": rows,
        "bytes_per_trial": per_trial["bytes"],
        "student_bytes_per_trial": per_trial["student_bytes"],
    }


def file_behind(x) -> str | None:
    """The file whose memory map holds ``x``'s bytes, asked of the kernel (/proc/self/maps)."""
    address = x.untyped_storage().data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        low, high = (int(a, 16) for a in fields[0].split("-"))
        if low <= address < high:
            return fields[5] if len(fields) == 6 and fields[5].startswith("/") else None
    return None


def write_folder(root: Path, images: int, side: int) -> int:
    """``images`` RGB PNGs of ``side`` px in 4 overlapping classes under root/train; their decoded bytes."""
    import numpy as np
    from PIL import Image

    g = np.random.default_rng(0)
    for i in range(images):
        label = i % 4
        pixels = (label * 12 + g.integers(0, 96, (side, side, 3))).clip(0, 255).astype(np.uint8)  # classes overlap
        (root / "train" / f"c{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / "train" / f"c{label}" / f"{i}.png")
    return images * 3 * side * side


def _status_kb(pid: int) -> dict[str, int]:
    """A process's memory lines of /proc/<pid>/status (kB): VmHWM (its peak RSS), RssAnon, RssFile."""
    found = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "RssAnon", "RssFile"):
                found[key] = int(value.split()[0])
    return found


def train_memory(work: Path, images: int, side: int = 64) -> dict:
    """The memory of `kdsearch train` on an image folder: in memory, stream asked for, stream past the
    limit. Its peak RSS (the kernel's VmHWM: the pages of mapped files it touched count too) and
    the peak of its anonymous memory (RssAnon, sampled every 50 ms: what it holds of its own, not
    the page cache's reclaimable pages of a mapped file)."""
    import shutil
    import subprocess

    root = work / f"folder{side}"
    decoded = write_folder(root, images, side)
    runs = {}
    for label, extra in (
        ("device", ["--data-placement", "device"]),
        ("stream, asked for", ["--data-placement", "stream"]),
        ("stream, over data_memory_gb", ["--data-memory-gb", str(decoded / 4 / 1024**3)]),
    ):
        shutil.rmtree(root / "kdsearch-cache", ignore_errors=True)  # each run decodes the folder itself
        cmd = [sys.executable, "-m", "kdsearch", "train", "--method", "ce", "--dataset", "imagefolder", "--data-dir", str(root)]
        cmd += ["--image-size", str(side), "--epochs", "1", "--cache-dir", str(work / "cache"), "--quiet", *extra]
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        peak: dict[str, int] = {}
        while proc.poll() is None:
            for key, kb in _status_kb(proc.pid).items():
                peak[key] = max(peak.get(key, 0), kb)
            time.sleep(0.05)
        if proc.returncode != 0:
            raise SystemExit(f"kdsearch train ({label}) failed: {proc.stderr.read()[-2000:]}")
        runs[label] = {
            "peak_rss_mb": peak.get("VmHWM", 0) / 1024,
            "peak_anon_mb": peak.get("RssAnon", 0) / 1024,
            "peak_file_mb": peak.get("RssFile", 0) / 1024,
            "seconds": time.perf_counter() - started,
        }
        print(label, json.dumps(runs[label]), flush=True)
    return {"images": images, "side": side, "decoded_mb": decoded / 1024**2, "runs": runs}


def past_memory(work: Path, images: int) -> dict:
    """An image folder four times larger than its ``data_memory_gb``: decoded to disk, then a
    2-epoch CE run with ``auto`` placement; against the same run on it decoded in memory."""
    from kdsearch import TrainConfig, fit
    from kdsearch.api import load_data

    root = work / "folder"
    decoded = write_folder(root, images, 32)
    limit_gb = decoded / 4 / 1024**3
    base = {
        "dataset": "imagefolder",
        "data_dir": str(root),
        "image_size": 32,
        "method": "ce",
        "student": "resnet8",
        "epochs": 2,
        "threads": 2,
        "cache_dir": str(work / "cache"),
        "data_placement": "auto",
    }
    said: list[str] = []
    before = _rss()
    with OwnPeak() as peak:
        started = time.perf_counter()
        data = load_data(TrainConfig.from_dict({**base, "data_memory_gb": limit_gb}))
        streamed = fit(
            TrainConfig.from_dict({**base, "data_memory_gb": limit_gb}),
            data=data,
            measure_speed=False,
            evaluate_test=False,
            log=said.append,
        )
        seconds = time.perf_counter() - started
    in_memory = fit(
        TrainConfig.from_dict({**base, "data_placement": "host"}),
        data=load_data(TrainConfig.from_dict(base)),
        measure_speed=False,
        evaluate_test=False,
    )
    return {
        "images": images,
        "decoded_mb": decoded / 1024**2,
        "data_memory_gb": limit_gb,
        "on_disk": file_behind(data.train_x) is not None,  # the kernel's word: its pages are a file's
        "line": next((x for x in said if x.startswith("data placement:")), ""),
        "val_acc": streamed.metrics["val/acc"],
        "val_acc_in_memory": in_memory.metrics["val/acc"],
        "seconds": seconds,
        "peak_rss_growth_mb": max(0, peak.peak - before) / 1024**2,
    }


def capacity() -> list[dict]:
    """The largest training set (images, with 10% more for validation) that 4 trials at once can
    sweep by placement, from kdsearch's own arithmetic (``placement.Sizes.fits``): a 24 GB CPU
    machine, and one 80 GB GPU (0.25 each) on a host with 24 GB free; a 1 TB disk for streams."""
    from kdsearch.data.placement import Sizes

    GB = 1024**3
    machines = {"24 GB CPU machine": ("cpu", 24 * GB // 4, 24 * GB), "80 GB GPU, 24 GB host": ("cuda", 80 * GB // 4, 24 * GB)}
    rows = []
    for machine, (device, share, host) in machines.items():
        for size in (32, 64, 128):
            row = {"machine": machine, "size": size}
            for placement in ("device", "host", "stream"):
                lo, hi = 0, 10**10
                while lo < hi:  # the largest n that fits
                    n = (lo + hi + 1) // 2
                    val = n // 10 * 3 * size * size
                    s = Sizes(
                        n,
                        (3, size, size),
                        n * 3 * size * size + val,
                        n * 3 * (size + 8) ** 2 + val,
                        4,
                        device,
                        share,
                        host,
                        1024 * GB,
                        "disk",
                    )
                    lo, hi = (n, hi) if s.fits(placement) else (lo, n - 1)
                row[placement] = lo
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 images: checks the path (CI)")
    parser.add_argument("--out", default=str(ROOT / "results"))
    parser.add_argument(
        "--repeats", type=int, default=None, help="sweeps per memory figure, the least kept (default 2; --quick 1)"
    )
    args = parser.parse_args()
    args.repeats = args.repeats or (1 if args.quick else 2)
    images = 20_000 if args.quick else 162_770
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, torch {torch.__version__}"
    }
    with tempfile.TemporaryDirectory(prefix="kdsearch-scale-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("KDSEARCH_CACHE", str(work / "cache"))
        big, tiny = synthetic(images, 16), synthetic(2_000, 16, seed=1)
        out["data_mb"] = (big.train_x.numel() + big.val_x.numel()) / 1024**2
        out["repeats"] = args.repeats
        out["memory"] = []
        for placement in ("device", "host", "stream"):
            for trials in (1, 4):
                for data in (tiny, big):
                    runs = [sweep_memory(data, trials, placement, work, run) for run in range(args.repeats)]
                    peaks = [r["peak_pss_mb"] for r in runs]
                    row = {**runs[0], "peak_pss_mb": min(peaks), "peaks_mb": peaks}  # the least: sampling adds, never takes
                    out["memory"].append(row)
                    print(json.dumps(row), flush=True)
        speed_data = synthetic(5_000 if args.quick else 20_000, 32, seed=2)
        out["speed"] = {p: step_speed(speed_data, p, work) for p in ("device", "host", "stream")}
        print(json.dumps(out["speed"]), flush=True)
        out["checkpoints"] = {"before": checkpoint_bytes(work, 1), "now": checkpoint_bytes(work, None)}
        print(json.dumps(out["checkpoints"]), flush=True)
        out["past_memory"] = past_memory(work, 1_000 if args.quick else 8_000)
        print(json.dumps(out["past_memory"]), flush=True)
        out["train_memory"] = train_memory(work, 2_000 if args.quick else 24_000)
    out["capacity"] = capacity()
    write(out, Path(args.out), "scale-quick" if args.quick else "scale")


def _every_student(run: dict) -> float:
    size = run["student_bytes_per_trial"] / max(1, sum(t["student_files"] for t in run["trials"]) / len(run["trials"]))
    missing = sum(t["checkpoints"] - t["student_files"] for t in run["trials"]) / len(run["trials"])
    return run["bytes_per_trial"] + missing * size


def _per_trial(run: dict) -> str:
    return ", ".join(f"{t['epochs']}: {t['checkpoints']} ({t['student_files']})" for t in run["trials"])


def write(r: dict, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)

    def peak(placement, trials, images):
        return next(
            m["peak_pss_mb"] for m in r["memory"] if (m["placement"], m["trials"], m["images"]) == (placement, trials, images)
        )

    images = max(m["images"] for m in r["memory"])
    tiny = min(m["images"] for m in r["memory"])
    goals, rows = [], []
    for placement in ("device", "host", "stream"):
        added = peak(placement, 4, images) - peak(placement, 1, images)
        without = peak(placement, 4, tiny) - peak(placement, 1, tiny)
        rows.append((placement, peak(placement, 1, images), peak(placement, 4, images), added, without, added - without))
    for shared in ("host", "stream"):
        row = next(row for row in rows if row[0] == shared)
        goals.append(
            (
                f"{shared} placement: 3 more trials take at most 0.3x the data ({0.3 * r['data_mb']:,.0f} MB) beyond what they "
                f"take without it ({row[5]:,.0f} MB)",
                row[5] <= 0.3 * r["data_mb"],
            )
        )
    folder = r["train_memory"]
    peaks = {k: v["peak_anon_mb"] for k, v in folder["runs"].items()}
    asked, past_limit, device = peaks["stream, asked for"], peaks["stream, over data_memory_gb"], peaks["device"]
    goals.append(
        (
            f"`kdsearch train --data-placement stream` on a folder that fits memory decodes it to disk a chunk at a time: "
            f"peak anonymous memory {asked:,.0f} MB against {past_limit:,.0f} MB streaming past the limit (+ 0.25x the "
            f"{folder['decoded_mb']:,.0f} MB of data) and {device:,.0f} MB in memory",
            asked <= past_limit + 0.25 * folder["decoded_mb"] and asked < device,
        )
    )
    speed = r["speed"]
    goals.append(
        (
            f"streamed >= 0.8x in-memory step throughput ({speed['stream'] / speed['device']:.2f}x)",
            speed["stream"] >= 0.8 * speed["device"],
        )
    )
    past = r["past_memory"]
    goals.append(
        (
            f"a folder 4x its data_memory_gb trains by streaming ({past['images']:,} images, {past['decoded_mb']:.1f} MB "
            f"decoded, limit {past['data_memory_gb'] * 1024:.2f} MB: on disk {past['on_disk']}, "
            f"`{past['line'][:40]}...`, val/acc {past['val_acc']:.4f} = in memory {past['val_acc_in_memory']:.4f})",
            past["on_disk"]
            and past["line"].startswith("data placement: stream")
            and past["val_acc"] == past["val_acc_in_memory"],
        )
    )
    before, now = r["checkpoints"]["before"], r["checkpoints"]["now"]
    lines = [
        f"# Data at size (benchmarks/scale.py{' --quick' if name.endswith('quick') else ''})",
        "",
        f"Machine: {r['machine']}.",
        "",
        f"## Memory: {images:,} synthetic training images of 3x16x16 ({r['data_mb']:,.0f} MB with validation), resnet8, "
        "one-epoch trials",
        "",
        "Peak PSS of the driver and every process it started (shared pages counted once in all), MB, the least of "
        f"{r.get('repeats', 1)} sweeps each. 'Without data': the same sweeps on {tiny:,} images.",
        "",
        "| placement | 1 trial | 4 trials at once | 3 more trials add | of which without data | of which the data's |",
        "| --- | --- | --- | --- | --- | --- |",
        *[
            f"| {p} | {one:,.0f} | {four:,.0f} | {added:,.0f} | {without:,.0f} | {data:,.0f} |"
            for p, one, four, added, without, data in rows
        ],
        "",
        "Placement lines the sweeps printed: " + "; ".join(f"`{m['line']}`" for m in r["memory"] if m["images"] == images),
        "",
        "## Speed: resnet8, batch 256, 3x32x32 images, training steps of the second epoch",
        "",
        "| placement | images/s | vs in memory |",
        "| --- | --- | --- |",
        *[f"| {p} | {v:,.0f} | {v / speed['device']:.2f}x |" for p, v in speed.items()],
        "",
        f"## An image folder, as a user trains on it: `kdsearch train` on {folder['images']:,} RGB PNGs at "
        f"{folder['side']}x{folder['side']} ({folder['decoded_mb']:,.0f} MB decoded), one epoch of CE",
        "",
        "The process's peak RSS (the kernel's VmHWM: the pages of mapped files it touched count too, "
        "shared and reclaimable), and the peaks of its anonymous memory (what it holds of its own) and "
        "of its file-backed pages, sampled every 50 ms, MB:",
        "",
        "| the folder | peak RSS MB | peak anonymous MB | peak file-backed MB | seconds |",
        "| --- | --- | --- | --- | --- |",
        *[
            f"| {k} | {v['peak_rss_mb']:,.0f} | {v['peak_anon_mb']:,.0f} | {v['peak_file_mb']:,.0f} | {v['seconds']:.0f} |"
            for k, v in folder["runs"].items()
        ],
        "",
        "## Checkpoints: 2 trials of 6 epochs under ASHA (rung at epoch 3), digits, KD resnet20 -> resnet8",
        "",
        "Every checkpoint holds the training state (`state.pt`); the student file (`student.pt`) is written at a "
        "trial's end only. Every checkpoint is kept, so what is on disk is what was written.",
        "",
        "| checkpoints | per trial (epochs: checkpoints (student files)) | bytes written per trial | of which student files "
        "| with a student file in every checkpoint (as before) |",
        "| --- | --- | --- | --- | --- |",
        *[
            f"| {label} | {_per_trial(run)} | {run['bytes_per_trial']:,.0f} ({run['bytes_per_trial'] / before['bytes_per_trial']:.2f}x) "
            f"| {run['student_bytes_per_trial']:,.0f} | {_every_student(run):,.0f} |"
            for label, run in (("every epoch (`checkpoint_every: 1`)", before), ("ASHA's rungs and the end (the default)", now))
        ],
        "",
        "The last column adds to what was written the student files the checkpoints without one would have held "
        "(the trial's student file size each), as kdsearch wrote them before the student file was written once.",
        "",
        "## Past the memory limit: an image folder four times its `data_memory_gb`",
        "",
        f"{past['images']:,} PNG images of 3x32x32 ({past['decoded_mb']:.1f} MB decoded), `data_memory_gb` "
        f"{past['data_memory_gb'] * 1024:.2f} MB: decoded to a file on disk and memory-mapped; a 2-epoch resnet8 run with "
        f"`auto` placement printed `{past['line']}`. Loading and training took {past['seconds']:.1f} s; this process's "
        f"peak RSS grew {past['peak_rss_growth_mb']:.0f} MB. val/acc {past['val_acc']:.4f}; the same run on the folder "
        f"decoded in memory: {past['val_acc_in_memory']:.4f}.",
        "",
        "## Capacity: the largest training set 4 trials at once can sweep, by placement (kdsearch's own arithmetic)",
        "",
        "Images (3 channels; validation 10% more; crop padding 4). Device: every trial's padded copy in its share "
        "(a CPU: all four and the shared copy in the free host memory); host: one copy in the free host memory; "
        "stream: a 1 TB disk; each with a quarter of the room to spare (`placement.HEADROOM`).",
        "",
        "| machine | image size | device | host | stream |",
        "| --- | --- | --- | --- | --- |",
        *[f"| {c['machine']} | {c['size']} | {c['device']:,} | {c['host']:,} | {c['stream']:,} |" for c in r["capacity"]],
        "",
        "Goals:",
        *[f"- {text}: **{'holds' if ok else 'MISSED'}**" for text, ok in goals],
    ]
    (out / f"{name}.json").write_text(json.dumps(r, indent=2) + "\n")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
