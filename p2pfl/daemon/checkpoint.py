"""Checkpoints: a node's model and round in its data dir, so a restarted daemon resumes where it was.

Format: one ``.npz`` file (a zip of ``.npy`` arrays, each member CRC-checked by zip) holding every
model tensor under ``tensor.<name>`` and the metadata as UTF-8 JSON bytes under ``meta``. It is read
with ``np.load(allow_pickle=False)``, so loading a file can never run code (``torch.load`` of a
pickle could). Only the node's own files are read this way; models from the network go through the
wire codec.

Writes are atomic: the file is written to a temp name in the same directory, fsynced, and renamed
over the old one (``os.replace``), so a crash mid-write leaves the previous checkpoint intact. An
unreadable or inconsistent file raises `CheckpointError` with the path and the reason; what the
daemon does then is its `checkpoint.on_corrupt` setting (refuse to start, or move it aside).

A model that diverged is never written: `save_checkpoint` raises `DivergedModel` and the previous
checkpoint, the last good model, stays. Diverged means NaN or infinite values in a tensor, or a
non-finite evaluated loss (``info["loss"]``): a model of huge but finite weights (merged from a
peer that sent 1e30s) passes the tensor check yet evaluates to NaN, and is as useless to resume.
Writing either would replace the one checkpoint that can be resumed. A file that holds such values
all the same (written by hand, or by an older p2pfl) is refused on load with that reason, not as a
model of another shape.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from p2pfl.errors import P2PFLError

__all__ = [
    "CHECKPOINT_FILE",
    "Checkpoint",
    "CheckpointError",
    "DivergedModel",
    "load_checkpoint",
    "quarantine",
    "save_checkpoint",
]

CHECKPOINT_FILE = "checkpoint.npz"
_FORMAT = "p2pfl-checkpoint"
_VERSION = 1
_META_KEY = "meta"
_TENSOR_PREFIX = "tensor."


class CheckpointError(P2PFLError):
    """A checkpoint file exists but cannot be used: unreadable, inconsistent, or for another model."""


class DivergedModel(CheckpointError):
    """A checkpoint not written because its model diverged; unlike a failed write, nothing is wrong
    with the disk, and the previous checkpoint is the one to keep."""


@dataclass(frozen=True)
class Checkpoint:
    """What a node needs to resume: its model after `round`, and protocol-specific state.

    `round` is the last round the node completed (0: none). `protocol_state` is free-form JSON data
    the protocol needs to resume (e.g. a MoDeST view); `info` holds what is only reported
    (accuracy, peer ID, time of writing).
    """

    round: int
    tensors: dict[str, np.ndarray]
    protocol: str
    protocol_state: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: str | os.PathLike[str], checkpoint: Checkpoint) -> None:
    """Write `checkpoint` to `path` atomically (temp file in the same directory, fsync, rename)."""
    path = Path(path)
    if checkpoint.round < 0:
        raise ValueError(f"round must be >= 0, got {checkpoint.round}")
    problem = _divergence(checkpoint.tensors, checkpoint.info)
    if problem is not None:
        raise DivergedModel(
            f"checkpoint of round {checkpoint.round} not written to {path}: {problem} (the model"
            " diverged); any previous checkpoint is kept"
        )
    meta = {
        "format": _FORMAT,
        "version": _VERSION,
        "round": checkpoint.round,
        "protocol": checkpoint.protocol,
        "protocol_state": checkpoint.protocol_state,
        "info": {**checkpoint.info, "saved_at": time.time()},
        "tensors": list(checkpoint.tensors),
    }
    arrays = {_TENSOR_PREFIX + name: np.ascontiguousarray(a) for name, a in checkpoint.tensors.items()}
    arrays[_META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(buffer.getbuffer())
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(path.parent)


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint | None:
    """The checkpoint at `path`; None if there is none; `CheckpointError` if it cannot be used."""
    path = Path(path)
    if not path.exists():
        return None
    if path.is_file() and not zipfile.is_zipfile(path):  # else np.load calls it pickled data
        raise CheckpointError(f"checkpoint {path} is unreadable: not a zip of arrays (.npz)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}  # reads (and CRC-checks) every member
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable: {exc}") from exc
    meta_bytes = arrays.pop(_META_KEY, None)
    if meta_bytes is None or meta_bytes.dtype != np.uint8 or meta_bytes.ndim != 1:
        raise CheckpointError(f"checkpoint {path} has no metadata")
    try:
        meta = json.loads(meta_bytes.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path} has unreadable metadata: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a p2pfl checkpoint")
    if meta.get("version") != _VERSION:
        raise CheckpointError(
            f"checkpoint {path} has version {meta.get('version')!r}; this p2pfl reads {_VERSION}"
        )
    round_ = meta.get("round")
    if type(round_) is not int or round_ < 0:
        raise CheckpointError(f"checkpoint {path}: round must be an int >= 0, got {round_!r}")
    names = meta.get("tensors")
    tensors = {key.removeprefix(_TENSOR_PREFIX): a for key, a in arrays.items()}
    if not isinstance(names, list) or set(names) != set(tensors) or len(names) != len(tensors):
        raise CheckpointError(f"checkpoint {path}: the tensors do not match the metadata's list")
    state, info = meta.get("protocol_state", {}), meta.get("info", {})
    if not isinstance(state, dict) or not isinstance(info, dict):
        raise CheckpointError(f"checkpoint {path}: protocol_state and info must be JSON objects")
    problem = _divergence(tensors, info)
    if problem is not None:
        raise CheckpointError(f"checkpoint {path} holds a diverged model: {problem}")
    return Checkpoint(
        round=round_,
        tensors={name: tensors[name] for name in names},
        protocol=str(meta.get("protocol", "")),
        protocol_state=state,
        info=info,
    )


def _divergence(tensors: dict[str, np.ndarray], info: dict[str, Any]) -> str | None:
    """What shows the model diverged (a tensor with NaN or infinite values, or a non-finite
    evaluated loss), or None."""
    bad = next(
        (name for name, a in tensors.items() if a.dtype.kind in "fc" and not np.isfinite(a).all()), None
    )
    if bad is not None:
        return f"tensor {bad!r} has NaN or infinite values"
    loss = info.get("loss")
    if isinstance(loss, int | float) and not math.isfinite(loss):
        return f"its evaluated loss is {loss}"
    return None


def quarantine(path: str | os.PathLike[str]) -> Path:
    """Move an unusable checkpoint aside (kept for inspection) and return where it went."""
    path = Path(path)
    target = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    os.replace(path, target)
    return target


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
