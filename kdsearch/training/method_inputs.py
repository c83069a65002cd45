"""What a method is given each step: the student's and the live teacher's forwards (logits, the
features and embedding the method reads, ``Method.reads``), the shapes it will see (``Seen``,
from one probe batch, before its modules are built), and the live teacher's outputs in the
form the shared teacher outputs keep them."""

from __future__ import annotations

import torch

from kdsearch.config import TrainConfig
from kdsearch.data import DatasetSplits
from kdsearch.errors import UserError
from kdsearch.methods import Method, Outputs
from kdsearch.methods.attention_maps import normalised_attention
from kdsearch.methods.base import Reads, Seen
from kdsearch.models import feature_names
from kdsearch.models.imported import top_level_names
from kdsearch.models.taps import Forward, feature_forward


def forwards(cfg, spec, student, teacher, *, outputs, method: Method):
    """The student's forward (logits, the features it names, its embedding when read), and the
    live teacher's when its outputs are not looked up."""
    reads = method.reads
    student_forward = feature_forward(
        student, feature_names(cfg, "student", spec["arch"]), "student", embedding="embedding" in reads.student
    )
    teacher_forward = None
    if reads.needs_teacher and outputs is None:
        teacher_forward = feature_forward(
            teacher.model, teacher_feature_names(cfg, teacher), "teacher", embedding="embedding" in reads.teacher
        )
    return student_forward, teacher_forward


def seen_by(
    cfg, data: DatasetSplits, teacher, student_forward, teacher_forward, *, method: Method, device, memory_format
) -> Seen:
    """The shapes the method will see (``Seen``), from one probe batch: a model that gives no
    feature maps the method reads is a one-line error here, before training."""
    reads = method.reads
    if not reads.student and not {"features", "attention", "embedding"} & reads.teacher:
        return Seen(num_outputs=data.num_outputs, num_samples=len(data.train_x))  # logits alone: no probe
    reader = f"method {cfg.method!r}"
    need = {"student": "features" in reads.student, "teacher": bool({"features", "attention"} & reads.teacher)}
    student_maps, student_width = probe(
        student_forward, "student", data, device, memory_format, reader=reader if need["student"] else None
    )
    teacher_maps, teacher_width = [], None
    if {"features", "attention", "embedding"} & reads.teacher:
        if teacher_forward is not None:
            teacher_maps, teacher_width = probe(
                teacher_forward, "teacher", data, device, memory_format, reader=reader if need["teacher"] else None
            )
        else:  # its outputs are looked up: the teacher's shapes from a probe where its weights are
            own = feature_forward(
                teacher.model, teacher_feature_names(cfg, teacher), "teacher", embedding="embedding" in reads.teacher
            )
            try:
                where = next(iter(teacher.model.parameters())).device
                teacher_maps, teacher_width = probe(
                    own, "teacher", data, where, torch.preserve_format, reader=reader if need["teacher"] else None
                )
            finally:
                own.close()
    return Seen(student_maps, teacher_maps, student_width, teacher_width, data.num_outputs, len(data.train_x))


def teacher_feature_names(cfg: TrainConfig, teacher) -> list[str] | None:
    spec = teacher.spec or {}
    return cfg.features.get("teacher") or spec.get("features") or feature_names(cfg, "teacher", spec.get("arch", ""))


def probe(forward: Forward, role: str, data: DatasetSplits, device, memory_format, *, reader: str | None = None):
    """(the shape of each feature map per image, the embedding's width or None) of ``forward``'s
    model on a probe batch. A ``reader`` (a method) of feature maps of a model that gives none (or
    not as N x C x H x W maps) is a one-line error, naming the modules the user can pick."""

    model = forward.model
    was_training = model.training
    model.eval()  # batch norm must not learn from the probe
    with torch.no_grad():
        x = torch.zeros(2, data.in_channels, *data.image_size, device=device).contiguous(memory_format=memory_format)
        _, features, embedding = forward(x)
    model.train(was_training)
    where = f"its top-level modules are {', '.join(top_level_names(model))}"
    if reader and not features:
        raise UserError(
            f"{reader} reads the {role}'s feature maps but {type(model).__name__} names none: "
            f"set features: {{{role}: [module, ...]}}; {where}"
        )
    for name, f in zip(getattr(forward, "names", range(1, len(features) + 1)), features):
        if reader and (not isinstance(f, torch.Tensor) or f.dim() != 4):
            got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
            raise UserError(
                f"the {role}'s feature {name!r} is {got}, not N x C x H x W maps: name convolutional modules; {where}"
            )
    shapes = [tuple(f.shape[1:]) for f in features if isinstance(f, torch.Tensor)]
    return shapes, (int(embedding.shape[1]) if embedding is not None else None)


def live_teacher(forward_out, reads: Reads) -> Outputs:
    """The live teacher's outputs in the form the shared teacher outputs keep them (fp16; the
    attention maps normalised, then rounded), so a run with the live teacher trains as a sweep's
    trial that looked them up."""
    logits, features, embedding = forward_out
    attention = None
    if "attention" in reads.teacher:
        attention = [normalised_attention(f, reads.attention_p).half().float() for f in features]
    features = [f.half().float() for f in features] if "features" in reads.teacher else features
    return Outputs(logits.half().float(), features, attention, embedding.half().float() if embedding is not None else None)
