"""Sweeps kept in object storage (``--storage s3://bucket/path``, ``gs://...``): through
pyarrow's filesystems, as Ray Tune writes them (no Ray, no MLflow here).

Ray writes every trial's logs and checkpoints to the URI. kdsearch keeps a local mirror of a
remote sweep's small files (``sweep.json``, the trials' ``params.json``/``result.json``,
``best/``, ``report/``) under ``$KDSEARCH_CACHE/sweeps/<scheme>/<bucket>/<path>``, reads and
writes there as for a local sweep, and copies what it writes back to the URI, so that
``kdsearch report|sync|export s3://...`` work from any machine that can reach the bucket.
Credentials and endpoints are pyarrow's (``AWS_*`` variables, ``AWS_ENDPOINT_URL``, ...).
"""

from __future__ import annotations

import os
from pathlib import Path

from kdsearch.errors import UserError, first_line

# Small files of a sweep: what reports, syncs and exports read (checkpoints are fetched one at a time).
SMALL_FILES = ("sweep.json", "optuna.db", "params.json", "result.json", "error.txt")
SMALL_FOLDERS = ("best", "report")


def is_uri(path: str | os.PathLike) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def cache_root() -> Path:
    return Path(os.environ.get("KDSEARCH_CACHE", Path.home() / ".cache" / "kdsearch"))


def mirror_dir(uri: str) -> Path:
    """The local folder that mirrors the sweep at ``uri``."""
    scheme, rest = uri.split("://", 1)
    return cache_root() / "sweeps" / scheme / rest.strip("/")


def _fs(uri: str):
    import pyarrow.fs as pafs  # only for s3:// and other URIs: local folders need no pyarrow

    try:
        return pafs.FileSystem.from_uri(uri.rstrip("/"))
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise UserError(
            f"cannot open the storage {uri} ({first_line(exc)}): check the URI, the credentials "
            "(AWS_ACCESS_KEY_ID, ...) and the endpoint (AWS_ENDPOINT_URL)"
        ) from None


def _info(uri: str):
    """pyarrow's FileInfo of ``uri``; a storage that cannot be reached is one line."""
    fs, path = _fs(uri)
    try:
        return fs, path, fs.get_file_info(path)
    except OSError as exc:
        raise UserError(
            f"cannot reach the storage {uri} ({first_line(exc)}): check that the server is up, the bucket exists "
            "and the credentials (AWS_ACCESS_KEY_ID, ...) and endpoint (AWS_ENDPOINT_URL) are right"
        ) from None


def exists(uri: str) -> bool:
    import pyarrow.fs as pafs  # only for s3:// and other URIs: local folders need no pyarrow

    return _info(uri)[2].type != pafs.FileType.NotFound


def check_writable(uri: str) -> None:
    """Write and remove a marker under ``uri`` now, so that a bucket that is not there or not
    writable stops the sweep before anything trains."""
    fs, path, _ = _info(uri)
    marker = f"{path.rstrip('/')}/.kdsearch-write-check"
    try:
        with fs.open_output_stream(marker) as stream:
            stream.write(b"ok")
        fs.delete_file(marker)
    except OSError as exc:
        raise UserError(
            f"cannot write to the storage {uri} ({first_line(exc)}): create the bucket, or pass a --storage you can write to"
        ) from None


def _wanted(rel: str) -> bool:
    parts = rel.split("/")
    if parts[0] in SMALL_FOLDERS:
        return True
    return parts[-1] in SMALL_FILES and len(parts) <= 2


def _last_student(items: list, root: str, trial: str) -> list:
    """Of one trial's checkpoint files, its last checkpoint's student file, or its state where the
    trial stopped before its end (the student is written from it: checkpoint.trial_student)."""
    kept: dict[str, dict[str, object]] = {}
    for item in items:
        parts = item.path[len(root) + 1 :].split("/")
        if len(parts) == 3 and parts[0] == f"trial_{trial}" and parts[1].startswith("checkpoint_"):
            kept.setdefault(parts[1], {})[parts[2]] = item
    if not kept:
        return []
    files = kept[max(kept)]
    found = files.get("student.pt") or files.get("state.pt")
    return [found] if found is not None else []


def pull(uri: str, trial: str | None = None) -> Path:
    """Copy the sweep at ``uri``'s small files (or one trial's last checkpoint) into its local mirror;
    returns the mirror."""
    import pyarrow.fs as pafs  # only for s3:// and other URIs: local folders need no pyarrow

    fs, root, info = _info(uri)
    if info.type == pafs.FileType.NotFound:
        raise UserError(f"no sweep at {uri}: check the URI (a sweep is <storage>/<name>)")
    local = mirror_dir(uri)
    root = root.rstrip("/")
    try:
        items = [i for i in fs.get_file_info(pafs.FileSelector(root, recursive=True)) if i.type == pafs.FileType.File]
        for item in _last_student(items, root, trial) if trial is not None else items:
            rel = item.path[len(root) + 1 :]
            if trial is None and not _wanted(rel):
                continue
            dest = local / rel
            if dest.is_file() and dest.stat().st_size == item.size and rel.endswith(".pt"):
                continue  # checkpoints do not change once written
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.part")
            with fs.open_input_stream(item.path) as src, open(tmp, "wb") as out:
                while chunk := src.read(1 << 22):
                    out.write(chunk)
            os.replace(tmp, dest)
    except OSError as exc:
        raise UserError(f"cannot read the sweep at {uri} ({first_line(exc)}): check the storage and try again") from None
    return local


def push(local: Path, uri: str, files: list[Path]) -> None:
    """Copy ``files`` (inside the mirror ``local``) to the same places under ``uri``."""
    fs, root = _fs(uri)
    root = root.rstrip("/")
    try:
        for path in files:
            rel = Path(path).resolve().relative_to(Path(local).resolve()).as_posix()
            with open(path, "rb") as src, fs.open_output_stream(f"{root}/{rel}") as out:
                while chunk := src.read(1 << 22):
                    out.write(chunk)
    except OSError as exc:
        raise UserError(
            f"cannot write the sweep's results to {uri} ({first_line(exc)}); they are in {local}: "
            "copy them there when the storage is back"
        ) from None


def delete(uri: str) -> None:
    fs, path = _fs(uri)
    try:
        fs.delete_dir(path)
    except OSError:
        pass  # nothing there, or not ours to remove
