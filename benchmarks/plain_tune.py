"""What a user would write without kdsearch: a plain Ray Tune script that trains the same
one-epoch KD trials (resnet20 -> resnet8 on digits, the same settings drawn at random), each a
function trainable that calls ``tune.report`` after its epoch, 2 at a time, actors reused as a
careful hand-written script sets it (Tune's default starts a new worker per trial, ~4 s each),
no MLflow, no Optuna, no checkpoints. many_trials.py runs it beside `kdsearch sweep` to put kdsearch's
overhead per trial as a ratio to this one, measured on the same machine in the same sitting.

    python benchmarks/plain_tune.py TRIALS CACHE_DIR    # prints one JSON line

The teacher is the one `kdsearch sweep` trained and cached in CACHE_DIR (the same settings), so
both arms train under the same teacher; here each trial runs it live, as a hand-written script
would (the overhead per trial leaves the trials' own time out either way).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import ray
from ray import tune

from kdsearch import TrainConfig, fit
from kdsearch.data import load_dataset
from kdsearch.teacher.weights import get_teacher


def config(cache: str, alpha: float = 0.5, temperature: float = 4.0) -> TrainConfig:
    return TrainConfig(
        method="kd", dataset="digits", teacher="resnet20", student="resnet8", epochs=1, threads=1, cache_dir=cache,
        method_args={"alpha": alpha, "temperature": temperature},
    )  # fmt: skip


def trial(settings: dict, data, teacher, cache: str) -> None:
    cfg = config(cache, settings["alpha"], settings["temperature"])
    fit(cfg, data=data, teacher=teacher, measure_speed=False, evaluate_test=False, on_epoch_end=lambda m, _: tune.report(m))


def main(trials: int, cache: str) -> dict:
    data = load_dataset("digits")
    teacher = get_teacher(config(cache), data)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="plain-tune-") as storage:
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(trial, data=data, teacher=teacher, cache=cache), {"cpu": 1}),
            param_space={"alpha": tune.uniform(0.1, 0.9), "temperature": tune.loguniform(1, 10)},
            tune_config=tune.TuneConfig(
                num_samples=trials, max_concurrent_trials=2, metric="val/acc", mode="max", reuse_actors=True
            ),
            run_config=tune.RunConfig(storage_path=storage, name="plain", verbose=0),
        )
        started = time.perf_counter()
        results = tuner.fit()
        phase = time.perf_counter() - started
        if results.errors:
            raise SystemExit(f"{len(results.errors)} plain Tune trials failed: {results.errors[0]}")
        totals = [r.metrics.get("time_total_s", 0.0) for r in results]
        steps = [r.metrics.get("time/epoch_train_s", 0.0) for r in results]  # one epoch a trial
    ray.shutdown()
    return {
        "trials": trials, "trials_phase_s": phase, "sum_trial_s": sum(totals), "sum_train_steps_s": sum(steps),
        "trial_results": len(totals),
    }  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), str(Path(sys.argv[2]).resolve()))), flush=True)
