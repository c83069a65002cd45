"""Weights from elsewhere: torchvision's pretrained weights by name, and files in the formats
people keep models in (a state dict, safetensors, TorchScript, a kdsearch checkpoint).

``load_weights`` puts a state dict into a model built for the user's data: a first
convolution made for colour images is summed over its input channels for grey ones, and a
head sized for other classes is left freshly initialised (the caller fine-tunes it).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from kdsearch.errors import UserError
from kdsearch.models.checkpoint import FORMAT, read_checkpoint
from kdsearch.models.imported import head_name


def weights_cache_file(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def torchvision_weights(arch: str, weights: str) -> dict[str, torch.Tensor]:
    """torchvision's pretrained state dict for ``arch`` (a torchvision builder name or
    ``torchvision.models:name``), from the torch hub cache (``$TORCH_HOME``), downloaded there
    when missing and the network allows."""
    from torchvision.models import get_model_weights  # only for torchvision's own weights

    builder = arch.rpartition(":")[2]
    try:
        enum = get_model_weights(builder)
    except (ValueError, KeyError):
        raise UserError(
            f"teacher_weights {weights!r}: torchvision has no pretrained weights for {arch!r}; use a torchvision "
            "model name such as resnet50, or teacher_checkpoint for a weights file"
        ) from None
    if weights not in enum.__members__:
        raise UserError(f"torchvision has no weights {weights!r} for {builder}: choose one of {', '.join(enum.__members__)}")
    entry = enum[weights]
    path = weights_cache_file(entry.url)
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UserError(
                f"{path} is not a readable weights file ({type(exc).__name__}): delete it and fetch it again"
            ) from None
    try:
        return entry.get_state_dict(progress=False)
    except Exception as exc:  # no network: URLError, OSError, ...
        raise UserError(
            f"torchvision weights {builder} {weights} are not in the torch hub cache: looked for {path} "
            f"({type(exc).__name__} fetching {entry.url}); copy the file there, or set TORCH_HOME to the folder holding hub/"
        ) from None


def read_weights_file(path: str | Path) -> tuple[str, object]:
    """(kind, content) of a model file: ("kdsearch", checkpoint dict), ("torchscript", module)
    or ("state_dict", tensors), whatever its suffix."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"teacher checkpoint {path} does not exist: pass the path of a model file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # only for a .safetensors weight file

        try:
            return "state_dict", load_file(str(path))
        except Exception as exc:
            raise UserError(f"{path} is not a readable safetensors file ({type(exc).__name__})") from None
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            scripted = any(
                name.endswith("/constants.pkl") or name.split("/", 1)[-1].startswith("code/") for name in archive.namelist()
            )
        if scripted:
            try:
                return "torchscript", torch.jit.load(str(path), map_location="cpu")
            except Exception as exc:
                raise UserError(f"{path} is not a loadable TorchScript file ({type(exc).__name__}: {exc})") from None

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return "kdsearch", read_checkpoint(path)  # its one-line error says what is wrong with the file
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        return "kdsearch", payload
    for key in ("state_dict", "model", "model_state_dict"):  # training scripts' checkpoints
        if isinstance(payload, dict) and isinstance(payload.get(key), dict):
            payload = payload[key]
            break
    if not isinstance(payload, dict) or not payload or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise UserError(
            f"{path} holds no state dict (a mapping of parameter names to tensors): save it with torch.save(model.state_dict())"
        )
    return "state_dict", payload


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> bool:
    """Load ``state`` into ``model``; returns True when the head did not fit the model's
    outputs and was left freshly initialised (so the model needs fine-tuning)."""
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel / DDP
        state = {k[len("module.") :]: v for k, v in state.items()}
    own = model.state_dict()
    head = head_name(model)
    head_keys = {f"{head}.weight", f"{head}.bias"} if head else set()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        what = f"lacks {missing[0]!r}" if missing else f"has {unexpected[0]!r}, which the model does not"
        raise UserError(
            f"{source} does not fit a {type(model).__name__}: the file {what} ({len(missing)} missing, {len(unexpected)} "
            "unexpected keys); name the architecture it was saved from"
        )
    fresh_head, kept = False, {}
    for key, value in state.items():
        want = own[key].shape
        if value.shape == want:
            kept[key] = value
        elif key in head_keys:
            fresh_head = True
        elif value.dim() == 4 and want[1] == 1 and value.shape[0] == want[0] and value.shape[2:] == want[2:]:
            kept[key] = value.sum(dim=1, keepdim=True)  # a colour stem for grey images
        else:
            raise UserError(
                f"{source} does not fit a {type(model).__name__}: {key} is {tuple(value.shape)} in the file, "
                f"{tuple(want)} in the model; name the architecture it was saved from"
            )
    model.load_state_dict(kept, strict=False)
    return fresh_head
