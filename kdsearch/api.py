"""The Python API: ``kdsearch.fit(config)`` finds what a run needs and trains.
(``kdsearch.sweep(space)`` is ``kdsearch.sweeper.run.sweep``.)

The engine (``kdsearch.training.engine.train_student``) takes its data and teacher from the caller; this is
the caller for a config alone: it loads the dataset, finds the cached teacher or trains it
once, and, for methods without a teacher, picks the teacher the student is compared with.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from kdsearch.config import TrainConfig
from kdsearch.data import DatasetSplits, load_data
from kdsearch.methods import check_method, method_class
from kdsearch.models.imported import import_models
from kdsearch.runtime import interrupts
from kdsearch.runtime.device import set_threads
from kdsearch.teacher.weights import Teacher, get_teacher, given_teacher, reference_teacher
from kdsearch.training import engine as train


def resolve_teacher(
    cfg: TrainConfig, data: DatasetSplits, *, reference: bool, log: Callable[[str], None] = lambda _: None
) -> Teacher | None:
    """The teacher the method trains with (cached, or trained now), else, if ``reference``, the
    one its compression is measured against (trained or an untrained model of its architecture)."""
    if method_class(cfg.method).uses_teacher(cfg.method_args):
        return get_teacher(cfg, data, log=log)
    return reference_teacher(cfg, data) if reference else None


def fit(
    config: TrainConfig | dict,
    data: DatasetSplits | None = None,
    teacher: Teacher | nn.Module | None = None,
    *,
    log: Callable[[str], None] = lambda _: None,
    measure_speed: bool = True,
    evaluate_test: bool = True,
    **engine_options,
) -> train.FitResult:
    """Train a student for ``config``; ``data`` and ``teacher`` are found when not given.

    Other keyword arguments (``on_epoch_end``, ``resume``, ``teacher_outputs``) go to the
    engine, ``kdsearch.training.engine.train_student``.
    """
    cfg = TrainConfig.from_dict(config) if isinstance(config, dict) else config
    check_method(cfg.method, cfg.method_args, cfg.epochs)
    import_models((cfg.student, cfg.teacher))  # the user's models import now, not after a teacher trained
    set_threads(cfg.threads)
    with interrupts.remembered():  # a Ctrl-C is never lost, even one Python swallowed in a finaliser
        if data is None:
            data = load_data(cfg)
        check_method(cfg.method, cfg.method_args, cfg.epochs, data.multilabel)  # DKD on multi-label data: before a teacher trains
        if teacher is not None:
            teacher = given_teacher(teacher, cfg, data)
        else:
            teacher = resolve_teacher(cfg, data, reference=measure_speed and evaluate_test, log=log)
        return train.train_student(
            cfg, data, teacher, log=log, measure_speed=measure_speed, evaluate_test=evaluate_test, **engine_options
        )
