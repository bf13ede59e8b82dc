"""Atomic writes and safe checkpoint loading.

Every file facelab writes goes to a temporary sibling first and is renamed into place, so a killed process leaves
either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import pickletools
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from facelab.errors import FacelabError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", *, fsync: bool = True) -> Iterator[IO[Any]]:
    """Open a temp file next to ``path``; on clean exit fsync and rename it over ``path``.

    ``fsync=False`` skips the flush to disk: a killed process still leaves either the old file or the whole new one
    (the rename is atomic), only a power cut can leave the new file short. For many small derived files whose
    readers check them (e.g. the crops of ``facelab align``, which the manifest and a size check guard).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the permissions open() would
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_open(path, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=False)
        fh.write("\n")


def save_torch(path: str | Path, obj: Any) -> None:
    import torch  # here, not at the top: the atomic writers serve torch-free worker processes too

    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)


#: read at most this much of a non-zip file to list the globals its pickle names
_SCAN_LIMIT = 64 << 20
_ADVICE = ("weights_only", "Weights only", "Check the documentation", "Please file an issue", "trusted source",
           "torch.serialization.add_safe_globals", "safe_globals")


def _pickle_globals(data: bytes) -> list[str]:
    """``module.name`` of every global a pickle stream references, read from its opcodes (nothing is executed).

    ``GLOBAL`` carries its name in the opcode; ``STACK_GLOBAL`` takes the two strings pushed before it.
    """
    names: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL" and isinstance(arg, str):
                names.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # a damaged stream: keep what was read before the damage
        pass
    return list(dict.fromkeys(names))


def refused_globals(path: Path) -> list[str]:
    """The globals in a checkpoint that ``torch.load(weights_only=True)`` refuses, found without unpickling.

    A ``torch.save`` zip is asked through torch's own scanner; a bare pickle stream (not a torch file) lists every
    global it references, since torch's safe loader refuses bare streams outright.
    """
    import torch

    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a torch zip file
        pass
    with open(path, "rb") as fh:
        return _pickle_globals(fh.read(_SCAN_LIMIT))


def _cause(exc: BaseException) -> str:
    """The informative line of a torch.load error, without torch's advice to load with weights_only=False."""
    if isinstance(exc, KeyError | EOFError | IndexError):  # torch's loader fell over bytes that are no checkpoint
        return f"not a torch checkpoint (unreadable at {type(exc).__name__} {exc})"
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not any(a in ln for a in _ADVICE)]
    detail = (useful or lines or [type(exc).__name__])[0]
    return detail.removeprefix("WeightsUnpickler error:").strip() or type(exc).__name__


def load_torch(path: str | Path, map_location: Any = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers only, never arbitrary pickles.

    Raises:
        FacelabError: the file is missing, damaged, or holds Python objects that loading would have to construct by
            running code -- the message names those objects (e.g. ``posix.system``), the real reason it is refused.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FacelabError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of foreign files before refusing them
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = refused_globals(path)
        if found:
            shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
            raise FacelabError(f"cannot read checkpoint {path}: it holds Python objects that facelab will not "
                               f"unpickle ({shown}); a checkpoint may hold only tensors and plain containers, so "
                               f"loading one can never run code") from exc
        raise FacelabError(f"cannot read checkpoint {path}: {_cause(exc)}") from exc
    except Exception as exc:  # torch raises several types for truncated / foreign files
        raise FacelabError(f"cannot read checkpoint {path}: {_cause(exc)}") from exc
