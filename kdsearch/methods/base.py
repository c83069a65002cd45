"""The contract every distillation method keeps with the trainer.

A method is an ``nn.Module`` whose constructor arguments are its hyperparameters and whose
``forward(student, targets, teacher, inputs)`` returns ``{"loss": total, <term>: value}``
(a method that reads each sample's index takes it as ``index=``). What it reads is declared
once, in ``reads`` (a ``Reads``), and known before it is built (``reads_for(settings)``), so
the trainer, the shared teacher outputs, the sweep and the placement arithmetic ask that one
declaration instead of probing the method:

- ``Reads.teacher``: what the teacher gives each step: ``logits``; ``attention`` (its attention
  maps of exponent ``Reads.attention_p``); ``features`` (the feature maps of its stages, or of
  the modules named in ``features:``); ``embedding`` (the pooled input of its classifier head).
  Empty: the method runs without a teacher.
- ``Reads.student``: the same of the student, besides its logits (always given): ``features``,
  ``embedding``.
- ``Reads.index``: each sample's index in the training split (a memory bank keyed by sample).

Modules a method trains with the student (connectors, regressors, embedding heads, a memory
bank, DML's peers) are made in ``build(seen)``, once the shapes the method will see are known
(``Seen``), and listed by ``extra_modules()``: the optimiser trains them, every checkpoint saves
them and a resumed run restores them, and no export holds them (the exported student is the
student alone). ``describe()`` is a line worth logging once per run (AT's stage pairing).

Invalid settings raise ``ValueError``; the boundary (``build_method``, the trainer) turns
it into the one-line ``UserError`` a user sees.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from kdsearch.methods.task_loss import Outputs, TaskLoss

TEACHER_READS = ("logits", "attention", "features", "embedding")
STUDENT_READS = ("features", "embedding")


@dataclass(frozen=True)
class Reads:
    """What a method reads each step besides the student's logits and the labels."""

    teacher: frozenset[str] = frozenset()
    student: frozenset[str] = frozenset()
    attention_p: float = 2.0
    index: bool = False

    def __post_init__(self):
        for role, allowed in (("teacher", TEACHER_READS), ("student", STUDENT_READS)):
            names = frozenset([getattr(self, role)] if isinstance(getattr(self, role), str) else getattr(self, role))
            unknown = sorted(names - set(allowed))
            if unknown:
                raise ValueError(f"Reads.{role}: unknown {', '.join(unknown)}; a method reads {', '.join(allowed)}")
            object.__setattr__(self, role, names)

    @property
    def needs_teacher(self) -> bool:
        return bool(self.teacher)

    def __or__(self, other: Reads) -> Reads:
        """What serves both (a sweep over several methods: what its shared outputs must hold; a
        run whose attention exponent differs from the one kept computes its own, see mismatch())."""
        p = self.attention_p if "attention" in self.teacher else other.attention_p
        return Reads(self.teacher | other.teacher, self.student | other.student, p, self.index or other.index)


def reads_of(reads: Iterable[Reads]) -> Reads:
    out = Reads()
    for r in reads:
        out = out | r
    return out


@dataclass(frozen=True)
class Seen:
    """The shapes a method will see, known before training (from one probe batch): per image,
    without the batch dimension. ``num_samples``: the training split's size (a memory bank's)."""

    student_features: list[tuple[int, ...]] = field(default_factory=list)
    teacher_features: list[tuple[int, ...]] = field(default_factory=list)
    student_embedding: int | None = None
    teacher_embedding: int | None = None
    num_outputs: int = 0
    num_samples: int = 0


class Method(nn.Module):
    reads: Reads = Reads()

    def __init_subclass__(cls, **kwargs):
        # A method written before ``reads`` declared its needs as two flags: they still mean what
        # they meant (the teacher's logits; its attention maps and both networks' features).
        super().__init_subclass__(**kwargs)
        own = cls.__dict__
        if "reads" not in own and ("needs_teacher" in own or "needs_attention" in own):
            attention = bool(own.get("needs_attention", False))
            teacher = {"logits"} if own.get("needs_teacher", False) or attention else set()
            cls.reads = Reads(
                frozenset(teacher | ({"attention"} if attention else set())),
                frozenset({"features"} if attention else set()),
                float(own.get("attention_p", 2.0)),
            )

    def __init__(self, *, objective: TaskLoss):
        super().__init__()
        self.objective = objective

    @classmethod
    def reads_for(cls, settings: Mapping[str, object]) -> Reads:
        """What a method built with these settings reads (known before building it)."""
        return cls.reads

    @classmethod
    def uses_teacher(cls, settings: Mapping[str, object]) -> bool:
        return cls.reads_for(settings).needs_teacher

    @property
    def needs_teacher(self) -> bool:
        return self.reads.needs_teacher

    def build(self, seen: Seen) -> None:
        """Make the modules trained with the student from the shapes they will see (``Seen``);
        called once by the trainer before the optimiser is made."""

    def extra_modules(self) -> list[nn.Module]:
        """The modules trained with the student (compiled with it; never exported)."""
        return []

    def describe(self) -> str | None:
        """A line the trainer logs once, after the first epoch (AT: how stages were paired)."""
        return None

    def forward(self, student: Outputs, targets: torch.Tensor, teacher: Outputs | None, inputs: torch.Tensor) -> dict:
        raise NotImplementedError
