"""Export a student for deployment: safetensors, a plain state dict, TorchScript, ONNX.

Only the student is written (no teacher, optimiser or scheduler state, no wrapper
prefixes), beside a ``model.json`` card that says how to build and feed it. Every
format is loaded back after writing (ONNX through onnxruntime) and run on validation
images; its outputs must match the checkpoint's within ``ATOL + RTOL * |logits|``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from kdsearch.data import load_dataset
from kdsearch.errors import UserError
from kdsearch.models.checkpoint import build_from_spec, load_model, read_checkpoint
from kdsearch.training.evaluate import classification_metrics

FORMATS = ("safetensors", "pt", "torchscript", "onnx")
FILES = {"safetensors": "model.safetensors", "pt": "model.pt", "torchscript": "model.torchscript.pt", "onnx": "model.onnx"}
CARD = "model.json"
ATOL, RTOL = 1e-4, 1e-4  # fp32 end to end; ONNX Runtime's kernels differ from PyTorch's by ~1e-6
VERIFY_IMAGES = 512


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, then rename: never half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private; exports are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


CARD_KEY = "kdsearch.card"  # the model card, as JSON, in safetensors metadata and ONNX metadata_props


def _write(fmt: str, model: nn.Module, example: torch.Tensor, path: Path, card: dict) -> None:
    card_json = json.dumps(card)
    if fmt == "safetensors":
        from safetensors.torch import save_file  # each format's library only when that format is written or read

        tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
        _atomic_write(path, lambda p: save_file(tensors, str(p), metadata={"format": "pt", CARD_KEY: card_json}))
    elif fmt == "pt":
        _atomic_write(path, lambda p: torch.save(model.state_dict(), p))
    elif fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # trace is deprecated upstream, still what many runtimes load
            traced = torch.jit.trace(model, example)
        _atomic_write(path, lambda p: traced.save(str(p)))
    elif fmt == "onnx":
        batch = torch.export.Dim("batch", min=1)

        def export(p: Path) -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                logging.getLogger("torch.onnx").setLevel(logging.ERROR)
                torch.onnx.export(
                    model,
                    (example,),
                    str(p),
                    input_names=["images"],
                    output_names=["logits"],
                    dynamic_shapes={"x": {0: batch}},
                    dynamo=True,
                    external_data=False,
                    verbose=False,
                )
            import onnx  # (as above)

            proto = onnx.load(str(p))
            entry = proto.metadata_props.add()
            entry.key, entry.value = CARD_KEY, card_json
            onnx.save(proto, str(p))

        _atomic_write(path, export)


def _run(fmt: str, path: Path, spec: dict, x: torch.Tensor) -> torch.Tensor:
    """Load an exported file back the way a user would and run it."""
    if fmt in ("safetensors", "pt"):
        model = _model_from_weights(path, spec)
        with torch.no_grad():
            return model(x)
    if fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.load(str(path), map_location="cpu")(x)
    import onnxruntime  # (as above)

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])


def _model_from_weights(path: Path, spec: dict) -> nn.Module:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # (as above)

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    model = build_from_spec(spec)
    model.load_state_dict(state)
    return model.eval()


def preprocessing(channels: int, size) -> dict:
    """How ``kdsearch predict`` turns an image file into the model's input, step by step, so that a
    client following the card alone gets the same pixels."""
    mode = "L" if channels == 1 else "RGB"
    return {
        "steps": [
            f"decode the file with Pillow and convert it to mode {mode!r}"
            + (" (luma: L = R * 299/1000 + G * 587/1000 + B * 114/1000)" if mode == "L" else "")
            + ", before anything else",
            "crop the centred square: side = min(width, height), left = (width - side) // 2, "
            "top = (height - side) // 2, box (left, top, left + side, top + side)",
            f"resize the square to {size[1]}x{size[0]} (width x height) with Pillow's bilinear filter "
            "(Image.BILINEAR, which antialiases when it shrinks)",
            "take the uint8 pixels as (channels, height, width), stack images as (N, C, H, W)",
            "x = (pixels / 255 - mean) / std per channel, as float32",
        ],
        "library": "Pillow",
        "mode": mode,
        "crop": "centre-square",
        "resize": {"height": size[0], "width": size[1], "interpolation": "bilinear"},
        "layout": "NCHW",
    }


def model_card(payload: dict) -> dict:
    data = payload.get("dataset", {})
    config = payload.get("config", {})
    size = data.get("image_size")
    return {
        "format": "kdsearch-export/1",
        "architecture": payload["model"],
        "num_outputs": payload["model"]["num_outputs"],
        "input": {
            "channels": data.get("in_channels"),
            "size": data.get("image_size"),
            "dtype": "float32, NCHW",
            "normalisation": {"mean": data.get("mean"), "std": data.get("std"), "note": "x = (pixels / 255 - mean) / std"},
            "preprocessing": preprocessing(data.get("in_channels") or 3, size) if size else None,
        },
        "task": "multi-label (one sigmoid per attribute)" if data.get("multilabel") else "single-label (softmax over classes)",
        "class_names": data.get("class_names"),
        "dataset": data.get("name"),
        "distillation": {
            "method": config.get("method"),
            "method_args": config.get("method_args"),
            "teacher": config.get("teacher"),
            "teacher_width": config.get("teacher_width"),
        },
        "config": config,
        "metrics": payload.get("metrics", {}),
    }


def normalise(x: torch.Tensor, data: dict) -> torch.Tensor:
    """uint8 images as the model takes them, with ``data``'s ``mean`` and ``std`` (a checkpoint's
    dataset info, or a model card's ``input.normalisation``)."""
    mean = torch.tensor(data["mean"]).view(1, -1, 1, 1) * 255
    std = torch.tensor(data["std"]).view(1, -1, 1, 1) * 255
    return (x.float() - mean) / std


def _validation_batch(payload: dict, data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The first VERIFY_IMAGES normalised validation images, their labels, and the split's size:
    the sample the checkpoint carries (a sweep's best student does), else read from the data."""

    data, config = payload.get("dataset", {}), payload.get("config", {})
    sample = payload.get("verify")
    if sample is not None and data_dir is None:
        return normalise(sample["x"], data), sample["y"], int(sample["of"])
    try:
        splits = load_dataset(
            data["name"],
            data_dir or config.get("data_dir"),
            False,
            config.get("val_fraction", 0.1),
            config.get("split_seed", 0),
            config.get("image_size"),
        )
    except (UserError, KeyError) as exc:
        raise UserError(f"cannot load the validation data to verify the export ({exc}); pass --data-dir") from None
    return normalise(splits.val_x[:VERIFY_IMAGES], data), splits.val_y[:VERIFY_IMAGES], len(splits.val_x)


def export_student(checkpoint: str | Path, formats: list[str], out_dir: str | Path, data_dir: str | None = None) -> dict:
    """Write the student in each format and verify it; returns the verification report."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise UserError(f"unknown export format {unknown[0] if unknown else '(none)'!r}: choose from {', '.join(FORMATS)}")
    model, payload = load_model(checkpoint)
    model.eval()
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {out} ({exc.strerror}): pass a writable --out") from None
    x, y, total = _validation_batch(payload, data_dir)
    with torch.no_grad():
        reference = model(x)
    multilabel = bool(payload.get("dataset", {}).get("multilabel"))
    report = {
        "checkpoint": str(checkpoint),
        "tolerance": {"atol": ATOL, "rtol": RTOL},
        "images": len(x),
        "images_note": f"the first {len(x)} of the {total} validation images; verify/* metrics are on these alone",
        "formats": {},
    }
    card = model_card(payload)
    for fmt in dict.fromkeys(formats):
        path = out / FILES[fmt]
        _write(fmt, model, x[:2], path, card)
        logits = _run(fmt, path, payload["model"], x)
        diff = (logits - reference).abs().max().item()
        ok = torch.allclose(logits, reference, atol=ATOL, rtol=RTOL)
        if not ok:
            path.unlink()
            raise UserError(
                f"{fmt} export does not reproduce the checkpoint (max |diff| {diff:.2e} > {ATOL}); nothing written for it"
            )
        entry = {"file": path.name, "bytes": path.stat().st_size, "max_abs_diff": diff}
        entry.update({f"verify/{k}": v for k, v in classification_metrics(logits, y, multilabel).items()})
        report["formats"][fmt] = entry
    card["files"] = report["formats"]
    card["verification"] = {k: v for k, v in report.items() if k != "formats"}
    _atomic_write(out / CARD, lambda p: p.write_text(json.dumps(card, indent=2)))
    return report


def read_card(folder: str | Path) -> dict:
    path = Path(folder) / CARD
    if not path.is_file():
        raise UserError(f"{folder} holds no {CARD}: pass a folder written by `kdsearch export`")
    return json.loads(path.read_text())


def load_student(folder: str | Path) -> nn.Module:
    """A ready (eval-mode) student from an export folder; its card is ``model.kdsearch_card``.

    Reads model.safetensors, else model.pt (weights only: no code is unpickled).
    """
    folder = Path(folder)
    card = read_card(folder)
    for name in (FILES["safetensors"], FILES["pt"]):
        if (folder / name).is_file():
            model = _model_from_weights(folder / name, card["architecture"])
            model.kdsearch_card = card
            return model
    raise UserError(f"{folder} has no model.safetensors or model.pt: export with --format safetensors or pt")


def describe_checkpoint(path: str | Path) -> dict:
    return model_card(read_checkpoint(path))
