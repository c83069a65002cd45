"""Everything that touches Ray lives in this package (Ray 2.60's public API; its private names,
each checked against Ray's version, in ``ray_internals``). Its rooms:

- ``searcher``: ``StudySearcher``, Tune's ``Searcher`` interface over Optuna's ask and tell;
- ``trainable``: ``EpochTrainable``, one epoch of ``fit``'s loop per step, and what a trial
  receives from the driver through Ray's object store (data, teacher, size metrics);
- ``cluster``: starting Ray, resources, GPUs, storage and the user's code on the workers;
- ``runner``: ``run_trials``, the Tuner with its searcher, scheduler, progress and callbacks;
- ``ray_internals``: the one place a private name of Ray is used, checked against Ray's version.

The Ctrl-C and stop plumbing is ``kdsearch.runtime.interrupts`` (signals, no Ray).
"""

import os

# Quiet, self-contained Ray defaults; set before ray is imported (a user's own setting wins).
for _key, _value in {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # kdsearch takes Ctrl-C itself (kdsearch.runtime.interrupts) and hands it to Tune as SIGUSR1, so it knows.
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
    # The legacy reporter path prints kdsearch's compact status table now and then; the new output
    # engine prints a box per trial start and result, too much for a sweep of many trials.
    "RAY_AIR_NEW_OUTPUT": "0",
}.items():
    os.environ.setdefault(_key, _value)

from kdsearch.ray_trials.cluster import (  # noqa: E402
    check_resources,
    check_storage,
    gpu_elsewhere,
    gpus_per_trial_default,
    node_count,
    run_on_a_gpu,
    start_ray,
    stop_ray,
    trials_at_once,
)
from kdsearch.ray_trials.runner import (  # noqa: E402
    can_resume,
    copy_student,
    make_searcher,
    place_data,
    run_trials,
    sweep_trials_at_once,
)
from kdsearch.ray_trials.trainable import STATE_FILE, STUDENT_FILE, EpochTrainable  # noqa: E402
from kdsearch.runtime.interrupts import TrialsInterrupted, TrialsStopped  # noqa: E402

__all__ = [
    "EpochTrainable",
    "STATE_FILE",
    "STUDENT_FILE",
    "TrialsInterrupted",
    "TrialsStopped",
    "can_resume",
    "check_resources",
    "check_storage",
    "copy_student",
    "gpu_elsewhere",
    "gpus_per_trial_default",
    "make_searcher",
    "run_on_a_gpu",
    "node_count",
    "place_data",
    "run_trials",
    "start_ray",
    "stop_ray",
    "sweep_trials_at_once",
    "trials_at_once",
]
