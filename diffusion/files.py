"""Generic file helpers: atomic writes, writability checks, JSON files and Git LFS pointer detection.

Every writer in the project goes through :func:`atomic_write`, so that a reader (or a crash) never sees half a file.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (a damaged JSON file, a Git LFS pointer...), with the reason and what to do.
    Also exported as ``diffusion.CheckpointError`` and ``diffusion.hub.CheckpointError``."""


def atomic_write(path: Path, write: Callable[[Path], None], keep_suffix: bool = False) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file.
    ``keep_suffix`` ends the temporary name with the path's suffix, for writers that pick the format from it.
    The file gets the mode a plain ``open(path, "w")`` would give: the existing file's, else 0666 less the umask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = None
    suffix = ".tmp" + (path.suffix if keep_suffix else "")
    while True:  # mkstemp's unique name, but created with 0666 so that the umask applies (mkstemp forces 0600)
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        if mode is not None:
            os.chmod(tmp, mode)
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_writable(path: str | Path, what: str = "file") -> Path:
    """Raise ValueError, saying what to do, unless :func:`atomic_write` can write the file ``path``
    (``what="file"``) or files into the folder ``path`` (``what="folder"``), folders to create included.
    Tried for real, with a file created and removed in the nearest existing folder, so it holds for root,
    read-only mounts and /proc alike; call it before the work whose result goes there."""
    path = Path(path).expanduser()
    shown = _short(str(path))
    try:
        if what == "file" and path.is_dir():
            raise ValueError(f"{shown} is a folder; give a file name, e.g. {_short(str(path / 'samples.png'))}.")
        if what == "folder" and path.exists() and not path.is_dir():
            raise ValueError(f"{shown} is a file, not a folder; give a folder (it is created if missing).")
        folder = path.parent if what == "file" else path
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise ValueError(f"Cannot write {shown}: {_short(str(existing))} is a file, not a folder.")
        try:
            fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=existing)
        except OSError as e:
            raise ValueError(
                f"Cannot write {shown}: no file can be created in {_short(str(existing))} ({e.strerror or e}). "
                f"Choose a {what} you can write to."
            ) from None
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"Cannot write {shown}: {e.strerror or e}. Choose a {what} you can write to.") from None
    return path


def _short(text: str, limit: int = 120) -> str:
    """``text`` cut to ``limit`` characters for a message (a 10,000-character argument stays one short line),
    control characters escaped (a NUL or a newline in an argument does not break the line)."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else f"{text[:limit // 2]}...{text[-limit // 4:]} ({len(text):,} characters)"


LFS_POINTER = b"version https://git-lfs"


def check_not_lfs_pointer(path: Path, what: str = "the file") -> None:
    """Raise CheckpointError if ``path`` is a Git LFS pointer (a clone without ``git lfs``) instead of the file."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(LFS_POINTER))
    except OSError:
        return  # the reader reports it
    if head == LFS_POINTER:
        raise CheckpointError(
            f"{path} is a Git LFS pointer, not {what}: fetch the real files with `git lfs pull` in the repository "
            "it came from (after `git lfs install`)."
        )


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


def read_json(path: Path) -> dict[str, Any]:
    check_not_lfs_pointer(Path(path))
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(
            f"{path} is not valid JSON ({e}); the checkpoint is damaged, download or export it again."
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} should hold a JSON object.")
    return data
