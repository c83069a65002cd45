"""The user's own models, named by import path: ``mynets:TinyNet`` or ``mypkg.models:make_student``.

The object named is a class or a callable that takes ``num_classes`` (and, if it says so,
``in_channels``) as keyword arguments plus any ``student_args``/``teacher_args``, and returns
an ``nn.Module`` mapping images to logits. One that takes no ``in_channels`` (torchvision's
builders) gets its first convolution replaced when the data has another number of channels.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

from torch import nn

from kdsearch.errors import UserError


def is_import_path(name: str) -> bool:
    return ":" in name


def _split(path: str) -> tuple[str, str]:
    module, _, attr = path.partition(":")
    if not module or not attr or not all(part.isidentifier() for part in (*module.split("."), *attr.split("."))):
        raise UserError(f"{path!r} is not an import path: write module:Name, e.g. mynets:TinyNet or mypkg.models:make_student")
    return module, attr


def import_object(path: str):
    """The callable an import path names; a one-line error when it cannot be imported."""
    module_name, attr = _split(path)
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            if "." in module_name:  # a package path (timm.models): most often a package to install
                raise UserError(
                    f"cannot import {module_name!r} (for {path}): no package {top!r} is installed: pip install {top} "
                    f"(or, if it is your own code, put its {top}/ folder in the current folder or on PYTHONPATH)"
                ) from None
            raise UserError(
                f"cannot import {module_name!r} (for {path}): put {top}.py in the current folder or its folder on "
                f"PYTHONPATH (or, if it is a package, pip install {top})"
            ) from None
        raise UserError(
            f"importing {module_name} (for {path}) failed: it needs {top!r}, which is not installed: pip install {top}"
        ) from None
    except Exception as exc:  # the user's module raised while importing
        raise UserError(f"importing {module_name} (for {path}) raised {type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = sorted(n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None)))[:12]
            raise UserError(f"{module_name} has no {attr!r} (for {path}): it defines {', '.join(names) or 'no callables'}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"{path} is a {type(obj).__name__}, not a class or function that builds a model")
    return obj


def import_models(names) -> list[str]:
    """Import every import path among ``names`` now (a one-line error for the first that fails);
    returns those paths."""
    own = sorted({n for n in names if isinstance(n, str) and is_import_path(n)})
    for name in own:
        import_object(name)
    return own


def module_file(path: str) -> Path | None:
    """Where the top-level package or module of an import path lives, if it is the user's own code:
    what a Ray cluster's workers must be sent. Installed distributions (timm, torchvision; wherever
    they live, site-packages or a folder on PYTHONPATH), the standard library and kdsearch itself
    are not sent: workers install those as any dependency."""

    top = _split(path)[0].split(".")[0]
    if top in sys.stdlib_module_names or top == "kdsearch" or top in packages_distributions():
        return None
    module = sys.modules.get(top) or importlib.import_module(top)
    file = getattr(module, "__file__", None)
    if file is None:
        return None
    file = Path(file).resolve()
    if any(part in ("site-packages", "dist-packages") for part in file.parts):
        return None
    return file.parent if file.name == "__init__.py" else file


def _accepts(factory, name: str) -> bool:
    try:
        return name in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def build_imported(path: str, num_classes: int, in_channels: int, args: dict) -> nn.Module:
    factory = import_object(path)
    kwargs = {"num_classes": num_classes, **args}
    if _accepts(factory, "in_channels"):
        kwargs["in_channels"] = in_channels
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise UserError(
            f"cannot build {path}({', '.join(f'{k}=...' for k in kwargs)}): {exc}; it must take num_classes "
            "(and in_channels) as keyword arguments"
        ) from None
    except Exception as exc:
        raise UserError(f"building {path} raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"{path} returned a {type(model).__name__}, not a torch.nn.Module")
    if "in_channels" not in kwargs:
        adapt_input_channels(model, in_channels)
    return model


def adapt_input_channels(model: nn.Module, in_channels: int) -> None:
    """Give the model's first convolution ``in_channels`` inputs (grey images into a colour model)."""
    name, conv = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), (None, None))
    if conv is None or conv.in_channels == in_channels or conv.groups != 1:
        return
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    set_module(model, name, new)


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def head_name(model: nn.Module) -> str | None:
    """The last linear layer: the classification head a new dataset replaces."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


def top_level_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_children()]
