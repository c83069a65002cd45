"""Deliberate bugs the suite must catch: each mutant changes one line of kdsearch the way a real
regression would (a dropped loss term, a leaked split, a wrong ranking) and names the tests that
must then fail. ``tests/test_mutants.py`` applies each one to a copy of the repository and runs
those tests there; ``make mutants`` does the same from the command line.

A mutant whose text no longer occurs in its file fails the check too: when the code moves, the
mutant is moved with it, not silently dropped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]  # pytest node ids or "file::-k expression" selections that must fail


MUTANTS = (
    Mutant(
        "DML drops the frozen teacher (use_teacher)",
        "kdsearch/methods/dml.py",
        "frozen = [teacher.logits.detach()] if self.needs_teacher else []",
        "frozen = []",
        ("tests/test_methods.py::test_dml_with_the_frozen_teacher_learns_from_it_too",),
    ),
    Mutant(
        "KD loses the T^2 factor",
        "kdsearch/methods/task_loss.py",
        'log_target=True, reduction="batchmean") * (t * t)',
        'log_target=True, reduction="batchmean")',
        ("tests/test_methods.py",),
    ),
    Mutant(
        "AT's weight beta/2 becomes beta",
        "kdsearch/methods/at.py",
        'return {"loss": loss + self.beta / 2 * at, **terms, "at": at}',
        'return {"loss": loss + self.beta * at, **terms, "at": at}',
        ("tests/test_methods.py",),
    ),
    Mutant(
        "RKD drops its angle term",
        "kdsearch/methods/rkd.py",
        "total = loss + self.distance_weight * distance + self.angle_weight * angle",
        "total = loss + self.distance_weight * distance",
        ("tests/test_method_formulas.py::test_rkd_is_the_papers_distance_and_angle_terms",),
    ),
    Mutant(
        "RKD's distances are not normalised by their mean",
        "kdsearch/methods/rkd.py",
        "return d / d[off].mean().clamp_min(1e-12)",
        "return d",
        ("tests/test_method_formulas.py::test_rkd_is_the_papers_distance_and_angle_terms",),
    ),
    Mutant(
        "SP's similarity rows are not normalised",
        "kdsearch/methods/sp.py",
        "return F.normalize(flat @ flat.t(), p=2, dim=1)",
        "return flat @ flat.t()",
        ("tests/test_method_formulas.py::test_sp_is_the_papers_row_normalised_similarity_distance",),
    ),
    Mutant(
        "PKT's kernel is the raw cosine (negative similarities)",
        "kdsearch/methods/pkt.py",
        "kernel = (n @ n.t() + 1.0) / 2.0",
        "kernel = n @ n.t()",
        ("tests/test_method_formulas.py::test_pkt_is_the_kl_between_cosine_kernel_distributions",),
    ),
    Mutant(
        "FitNet compares the student's map with the teacher's without its regressor",
        "kdsearch/methods/fitnet.py",
        "guided, hint = pooled_to_match(self.regressor(student_map).float(), teacher_map.float())",
        "guided, hint = pooled_to_match(student_map.float().repeat(1, 2, 1, 1), teacher_map.float())",
        ("tests/test_method_formulas.py::test_fitnet_is_the_mean_squared_hint_through_its_regressor",),
    ),
    Mutant(
        "CRD drops its negatives from the NCE loss",
        "kdsearch/methods/crd.py",
        "return -(positive.sum() + negatives.sum()) / scores.shape[0]",
        "return -positive.sum() / scores.shape[0]",
        ("tests/test_method_formulas.py::test_crd_is_the_papers_nce_against_both_memory_banks_and_moves_them",),
    ),
    Mutant(
        "ReviewKD's context loss compares the full maps alone, not their pooled pyramid",
        "kdsearch/methods/reviewkd.py",
        "sizes = [None] + [level for level in (4, 2, 1) if level < h]",
        "sizes = [None]",
        ("tests/test_method_formulas.py::test_reviewkd_fuses_deep_to_shallow_and_sums_the_hierarchical_context_loss",),
    ),
    Mutant(
        "streamed batches hand a method their positions in the batch, not the images' training-split indices",
        "kdsearch/data/pipeline.py",
        "yield self.normalise(images), self.y[on_device], on_device",
        "yield self.normalise(images), self.y[on_device], torch.arange(len(on_device), device=self.device)",
        ("tests/test_method_contract.py::test_a_method_reading_sample_indices_trains_alike_on_streamed_data",),
    ),
    Mutant(
        "trials receive the test split",
        "kdsearch/ray_trials/trainable.py",
        "out.update(test_x=data.test_x[:0].numpy(), test_y=data.test_y[:0].numpy())",
        "out.update(test_x=data.test_x.numpy(), test_y=data.test_y.numpy())",
        ("tests/test_ray_trials.py::test_trials_receive_no_test_images",),
    ),
    Mutant(
        "one validation image is also trained on",
        "kdsearch/data/splits.py",
        "val_idx, train_idx = order[:n_val], order[n_val:]",
        "val_idx, train_idx = order[:n_val], order[n_val - 1 :]",
        ("tests/test_data.py::test_train_val_and_test_partition_the_images",),
    ),
    Mutant(
        "one held-out test image is also trained on",
        "kdsearch/data/splits.py",
        "return take(x, order[n_out:]), y[order[n_out:]], take(x, order[:n_out]), y[order[:n_out]]",
        "return take(x, order[n_out - 1 :]), y[order[n_out - 1 :]], take(x, order[:n_out]), y[order[:n_out]]",
        ("tests/test_data.py::test_train_val_and_test_partition_the_images",),
    ),
    Mutant(
        "a trial's score is its last epoch, not its best",
        "kdsearch/search/record.py",
        "return float(value) if score is None else objective.best([score, value])",
        "return float(value)",
        ("tests/test_ray_trials.py::test_a_trials_reported_score_is_its_best_epoch_so_far",),
    ),
    Mutant(
        "ties rank the later trial first",
        "kdsearch/search/record.py",
        "return (not usable, -objective.sign * t.score(objective) if usable else 0.0, t.trial_id)",
        "return (not usable, -objective.sign * t.score(objective) if usable else 0.0, [-ord(c) for c in t.trial_id])",
        ("tests/test_ray_trials.py::test_a_tie_goes_to_the_trial_that_started_first_and_failed_trials_rank_last",),
    ),
    Mutant(
        "a failed trial counts as usable (its sentinel score ranks it)",
        "kdsearch/search/record.py",
        "return self.failure is None and math.isfinite(self.score(objective))",
        "return math.isfinite(self.score(objective))",
        ("tests/test_ray_trials.py::test_a_tie_goes_to_the_trial_that_started_first_and_failed_trials_rank_last",),
    ),
    Mutant(
        "a trial the shared teacher outputs do not serve runs live without saying why",
        "kdsearch/training/engine.py",
        "*forwards, teacher_live=live)",
        "*forwards, teacher_live=None)",
        ("tests/test_sweep.py::test_trials_the_shared_teacher_outputs_do_not_serve_say_why_once",),
    ),
    Mutant(
        "a teacher from another split is taken",
        "kdsearch/teacher/weights.py",
        '    check_split(path, payload.get("dataset", {}), data)\n',
        "",
        ("tests/test_train.py::test_checkpoints_record_the_split_and_a_teacher_from_another_split_is_refused",),
    ),
    Mutant(
        "the model card says nearest-neighbour resizing while predict resizes bilinearly",
        "kdsearch/delivery/export.py",
        '"resize": {"height": size[0], "width": size[1], "interpolation": "bilinear"},',
        '"resize": {"height": size[0], "width": size[1], "interpolation": "nearest"},',
        ("tests/test_export.py::test_a_client_with_the_card_alone_preprocesses_as_predict_does",),
    ),
    Mutant(
        "a schedule is evaluated once per epoch, not at every step",
        "kdsearch/training/engine.py",
        "progress = schedules.progress(epoch * per_epoch + steps, cfg.epochs * per_epoch)",
        "progress = schedules.progress(epoch * per_epoch, cfg.epochs * per_epoch)",
        ("tests/test_schedules.py::test_a_schedule_moves_within_an_epoch_not_only_between_epochs",),
    ),
    Mutant(
        "stream placement reads the whole file into memory",
        "kdsearch/data/placement.py",
        'array = np.load(path, mmap_mode="r")',
        "array = np.load(path)",
        ("tests/test_placement.py::test_a_streamed_epoch_holds_a_few_batches_of_its_data_in_memory_not_the_data",),
    ),
    Mutant(
        "stream placement on an image folder that fits memory decodes it whole in memory",
        "kdsearch/data/__init__.py",
        'to_disk=cfg.data_placement == "stream",',
        "to_disk=False,",
        ("tests/test_own_data.py::test_a_folder_over_its_memory_limit_is_decoded_to_disk_and_trains_streamed",),
    ),
    Mutant(
        "TPE without the constant liar",
        "kdsearch/search/study.py",
        "constant_liar=True",
        "constant_liar=False",
        ("tests/test_ray_trials.py::test_sixteen_trials_asked_at_once_spread_out_under_the_constant_liar",),
    ),
    Mutant(
        "TPE is plain random search",
        "kdsearch/search/study.py",
        'if sampler in ("random", "grid"):',
        'if sampler in ("random", "grid", "tpe"):',
        ("tests/test_ray_trials.py::test_tpe_asked_sixteen_at_once_still_models_the_objective_better_than_random_search",),
    ),
    Mutant(
        "a restarted trial's history keeps the epochs of its abandoned run",
        "kdsearch/ray_trials/ray_internals.py",
        "            self._drop_from(trial, epoch)  # elsewhere",
        "            pass  # elsewhere",
        (
            "tests/test_ray_trials.py::test_a_restarted_trial_keeps_each_epoch_once_from_its_last_run_and_a_resumed_sweep_reads_storage",
        ),
    ),
)


def _copy_with(mutant: Mutant, tmp: Path) -> Path | str:
    """A copy of the repository with ``mutant`` applied, or why it cannot be applied."""
    source = (ROOT / mutant.file).read_text()
    if source.count(mutant.old) != 1:
        return f"its text occurs {source.count(mutant.old)} times in {mutant.file}: update the mutant"
    for part in ("kdsearch", "tests", "search_spaces"):
        shutil.copytree(ROOT / part, tmp / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp / "pyproject.toml")
    (tmp / mutant.file).write_text(source.replace(mutant.old, mutant.new))
    return tmp


def _verdict(returncode: int, output: str, imported: str, copy: Path) -> tuple[bool, str]:
    lines = output.strip().splitlines()
    tail = lines[-1] if lines else f"exit status {returncode}"
    if not imported.startswith(str(copy)):
        return False, f"the copy's kdsearch was not the one imported ({imported.strip() or 'none'})"
    return returncode == 1, tail  # 1: tests ran and failed (5 would be: none collected)


# Most of a mutant's pytest, on its own, is importing what every one imports (torch, Ray, MLflow,
# pytest: ~4 s of ~6 here). run_mutants starts one runner that imports those once and forks a
# child per mutant; the child imports kdsearch and the tests from the mutant's copy. Forking is
# safe while the runner runs no Python thread but its own and has run no torch op (the idle BLAS
# pools numpy and scikit-learn start re-initialise at fork): checked, else each mutant gets a
# pytest of its own, one at a time.
PRELOAD = (
    "numpy",
    "torch",
    "torchvision",
    "PIL.Image",
    "sklearn.datasets",
    "yaml",
    "pandas",
    "optuna",
    "ray.tune",
    "mlflow",
    "pytest",
)


def run_mutants(mutants=MUTANTS, workers: int = 2, timeout: float = 600) -> list[tuple[bool, str]]:
    """(caught, what happened) of each mutant, ``workers`` at a time, in the order given."""
    with tempfile.TemporaryDirectory(prefix="kdsearch-mutants-") as tmp:
        outcomes: dict[int, tuple[bool, str]] = {}
        jobs = []
        for i, mutant in enumerate(mutants):
            copy = _copy_with(mutant, Path(tmp) / f"m{i}")
            if isinstance(copy, str):
                outcomes[i] = (False, copy)
            else:
                jobs.append({"index": i, "copy": str(copy), "tests": list(mutant.tests), "log": str(Path(tmp) / f"m{i}.log")})
        runner = subprocess.run(
            [sys.executable, __file__, "--runner", str(workers), str(timeout)],
            input="".join(json.dumps(job) + "\n" for job in jobs),
            capture_output=True,
            text=True,
            cwd=tmp,
            env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"),
        )
        for line in runner.stdout.splitlines():
            if line.startswith("{"):
                done = json.loads(line)
                job = next(j for j in jobs if j["index"] == done["index"])
                output = Path(job["log"]).read_text(errors="replace") if Path(job["log"]).exists() else ""
                outcomes[done["index"]] = _verdict(done["returncode"], output, done["imported"], Path(job["copy"]))
        for job in jobs:
            outcomes.setdefault(job["index"], (False, f"the mutant runner ended first: {runner.stderr.strip()[-300:]}"))
        return [outcomes[i] for i in range(len(mutants))]


def _child(job: dict) -> None:
    """In the forked child: the mutant's tests, with kdsearch and the tests from its copy; never returns."""
    code = 3
    try:
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        copy = job["copy"]
        os.chdir(copy)
        os.environ["PYTHONPATH"] = copy  # for the subprocesses a test starts
        sys.dont_write_bytecode = True
        here = str(Path(__file__).resolve().parent)
        sys.path[:] = [copy] + [p for p in sys.path if p and os.path.abspath(p) != here]
        import pytest

        code = int(pytest.main(["-q", "-x", "-p", "no:cacheprovider", *job["tests"]]))
        kdsearch = sys.modules.get("kdsearch")
        Path(job["log"] + ".imported").write_text(getattr(kdsearch, "__file__", None) or "")
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001 - said in the log, the mutant counts as missed
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def _runner(workers: int, timeout: float) -> int:
    """The runner of ``run_mutants``: jobs (JSON lines) on stdin, a JSON line on stdout as each ends."""
    import importlib
    import signal
    import threading
    import time

    for name in PRELOAD:
        importlib.import_module(name)
    jobs = [json.loads(line) for line in sys.stdin if line.strip()]
    forking = threading.active_count() == 1 and hasattr(os, "fork")
    running: dict[int, tuple[dict, float]] = {}
    while jobs or running:
        while jobs and len(running) < workers:
            job = jobs.pop(0)
            if not forking:
                _report(job, _pytest_of_its_own(job, timeout))
                continue
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                _child(job)
            running[pid] = (job, time.monotonic())
        if not running:
            continue
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            for late, (job, started) in running.items():
                if time.monotonic() - started > timeout:
                    os.kill(late, signal.SIGKILL)
            time.sleep(0.05)
            continue
        job, _ = running.pop(pid)
        _report(job, os.waitstatus_to_exitcode(status))
    return 0


def _pytest_of_its_own(job: dict, timeout: float) -> int:
    """Where forking is not safe: the mutant's tests in a pytest process of their own, with the
    copy first on PYTHONPATH; the same log and record of which kdsearch was imported."""
    env = dict(os.environ, PYTHONPATH=job["copy"])
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *job["tests"]],
            cwd=job["copy"],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        Path(job["log"]).write_text(f"timed out after {timeout:.0f} s")
        return -9
    Path(job["log"]).write_text(proc.stdout or proc.stderr[-300:])
    probe = [sys.executable, "-c", "import kdsearch; print(kdsearch.__file__)"]
    imported = subprocess.run(probe, cwd=job["copy"], env=env, capture_output=True, text=True)
    Path(job["log"] + ".imported").write_text(imported.stdout.strip())
    return proc.returncode


def _report(job: dict, returncode: int) -> None:
    marker = Path(job["log"] + ".imported")
    imported = marker.read_text() if marker.exists() else ""
    print(json.dumps({"index": job["index"], "returncode": returncode, "imported": imported}), flush=True)


def main() -> int:
    missed = 0
    for mutant, (caught, tail) in zip(MUTANTS, run_mutants(MUTANTS, workers=min(2, os.cpu_count() or 1))):
        missed += not caught
        print(f"{'caught' if caught else 'MISSED'}  {mutant.name}: {tail}", flush=True)
    print(f"{len(MUTANTS) - missed} of {len(MUTANTS)} mutants caught")
    return 1 if missed else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--runner"]:
        sys.exit(_runner(int(sys.argv[2]), float(sys.argv[3])))
    sys.exit(main())
