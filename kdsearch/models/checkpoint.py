"""Self-describing model checkpoints, written atomically and read without unpickling code.

A checkpoint is a plain dict: the weights, how to rebuild the model, what data it
expects (normalisation, class names) and its metrics. ``torch.load(weights_only=True)``
reads it; a file carrying a pickled callable is refused.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from kdsearch.errors import UserError, first_line
from kdsearch.models import build_model

FORMAT = "kdsearch-checkpoint/1"


def model_spec(
    arch: str,
    num_outputs: int,
    in_channels: int,
    stem: str,
    width: float,
    args: dict | None = None,
    *,
    features: list[str] | None = None,
) -> dict:
    """How to build a model: its architecture (a built-in name or an import path), the keyword
    arguments of an import path (``args``), and the modules Attention Transfer reads (``features``,
    None: the built-in stages)."""
    return {
        "arch": arch,
        "num_outputs": num_outputs,
        "in_channels": in_channels,
        "stem": stem,
        "width": width,
        "args": dict(args or {}),
        "features": list(features) if features else None,
    }


def build_from_spec(spec: dict) -> nn.Module:
    """A freshly initialised model of the architecture a ``model_spec`` describes."""
    return build_model(spec["arch"], spec["num_outputs"], spec["in_channels"], spec["stem"], spec["width"], spec.get("args"))


def save_checkpoint(path: str | Path, model: nn.Module | dict, spec: dict, **meta) -> Path:
    """Write ``{format, model spec, state_dict, **meta}`` to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = model if isinstance(model, dict) else model.state_dict()  # a module, or its state dict
    state = {k: v.detach().to("cpu").clone() for k, v in weights.items()}
    payload = {"format": FORMAT, "model": spec, "state_dict": state, **meta}
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as tmp:
        torch.save(payload, tmp)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.replace(tmp.name, path)  # a kill leaves either the old file or the new one, never half
    return path


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: pass the path of a .pt file kdsearch wrote")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "global" in text.lower():  # the weights-only unpickler met a callable it will not import
            found = re.search(r"GLOBAL ([\w.]+)", text)
            name = found.group(1) if found else "a callable"
            raise UserError(
                f"refusing to load {path}: it carries code ({name}), not just weights; use checkpoints kdsearch wrote"
            ) from None
        raise UserError(f"{path} is not a readable checkpoint (UnpicklingError): pass a checkpoint kdsearch wrote") from None
    except Exception as exc:  # torch raises many types (KeyError, RuntimeError, ...) on arbitrary bytes
        raise UserError(f"{path} is not a readable checkpoint ({type(exc).__name__}): pass a checkpoint kdsearch wrote") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path} is not a kdsearch checkpoint (no '{FORMAT}' format tag): pass a checkpoint kdsearch wrote")
    return payload


def load_model(path: str | Path, payload: dict | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the model a checkpoint describes and load its weights (``payload``: the
    checkpoint already read from ``path``)."""
    payload = read_checkpoint(path) if payload is None else payload
    spec = payload["model"]
    model = build_from_spec(spec)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise UserError(f"{path}: weights do not fit a {spec['arch']} ({first_line(exc)})") from None
    return model, payload


# A trial's checkpoint folder (kdsearch.ray_trials): the training state, to resume it, and the
# student file, written at the trial's end only. A checkpoint from before the end (an ASHA rung,
# ``checkpoint_every``) carries the best student so far inside the state, with what its student
# file would say: ``trial_student`` writes that file the first time something reads it.
TRIAL_STATE = "state.pt"
TRIAL_STUDENT = "student.pt"


def student_from_state(state: dict, dest: str | Path) -> Path:
    """Write the student file a trial's training state describes (its ``best`` entry)."""
    best = state["best"]
    weights = state["student"] if best["student"] is None else best["student"]  # None: the state's own student
    meta = {k: best[k] for k in ("dataset", "metrics", "config", "score")}
    return save_checkpoint(dest, weights, best["model"], **meta)


def trial_student(folder: str | Path, dest: str | Path | None = None) -> Path:
    """The student file of a trial's checkpoint folder, written from its state if the trial
    stopped before its end (a user-facing error if the folder holds neither); ``dest``: copied
    or written there instead of into the folder."""
    folder = Path(folder)
    student, out = folder / TRIAL_STUDENT, Path(dest) if dest is not None else folder / TRIAL_STUDENT
    if student.is_file():
        if out != student:
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(student, out)
        return out
    state_file = folder / TRIAL_STATE
    if not state_file.is_file():
        raise UserError(f"{folder} holds no {TRIAL_STUDENT} or {TRIAL_STATE}: pass a trial's checkpoint folder")
    return student_from_state(torch.load(state_file, map_location="cpu", weights_only=True), out)
