"""Generic file helpers: atomic writes, writability checks, JSON files and Git LFS pointer detection.

Every writer in the project goes through :func:`atomic_write`, so that a reader (or a crash) never sees half a file.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Any, Callable


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (a damaged JSON file, a Git LFS pointer...), with the reason and what to do.
    Also exported as ``diffusion.CheckpointError`` and ``diffusion.hub.CheckpointError``."""


NAME_MAX = 255  # bytes in a file name, on every Linux file system in use


def _target(path: Path) -> Path:
    """Where a write to ``path`` lands: a symlink is followed to its target (as ``open()`` does), so the link
    stays a link; ValueError for something that is not a regular file (a folder, a device, a FIFO, a socket)."""
    path = Path(os.path.realpath(Path(path).expanduser()))
    _check_name_length(path.name, path)
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):  # a new file (a folder on the way that is a file is said later)
        return path
    except OSError as e:  # a symlink loop, a name too long...
        raise ValueError(f"Cannot write {_short(str(path))}: {e.strerror or e}. Choose another name.") from None
    if stat.S_ISDIR(st.st_mode):
        raise ValueError(
            f"{_short(str(path))} is a folder; give a file name, e.g. {_short(str(path / 'samples.png'))}."
        )
    if not stat.S_ISREG(st.st_mode):
        kind = {stat.S_IFCHR: "a device", stat.S_IFBLK: "a device", stat.S_IFIFO: "a named pipe (FIFO)",
                stat.S_IFSOCK: "a socket"}.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise ValueError(
            f"{_short(str(path))} is {kind}, not a regular file; nothing is written there. Choose a file name."
        )
    return path


def _check_name_length(name: str, path: Path) -> None:
    if len(os.fsencode(name)) > NAME_MAX:
        raise ValueError(
            f"Cannot write {_short(str(path))}: the name {_short(name, 40)} is {len(os.fsencode(name))} bytes "
            f"long, more than the {NAME_MAX} a file system allows; choose a shorter one."
        )


def _temp_name(path: Path) -> Path:
    """The hidden temporary file :func:`atomic_write` writes before renaming it to ``path``: same folder, the
    path's suffix kept (writers that pick the format from it), a random part so that writers never collide,
    the name shortened where needed so that it is never longer than the longest file name allowed."""
    tail = f".{secrets.token_hex(4)}.tmp{path.suffix}"
    stem = os.fsencode(path.name)[: NAME_MAX - 1 - len(os.fsencode(tail))]  # a 255-byte name still fits
    return path.parent / f".{os.fsdecode(stem)}{tail}"


TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{8}\.tmp(\.[^.]*)?")  # what _temp_name makes


def temp_files(folder: Path) -> list[Path]:
    """The temporary files :func:`atomic_write` left in ``folder`` (a process killed mid-write leaves one)."""
    return sorted(p for p in Path(folder).glob(".*") if TEMP_NAME.fullmatch(p.name))


def _create_temp(path: Path) -> Path:
    """Create the temporary file for ``path`` exclusively, with 0666 less the umask (what ``open()`` gives a
    new file; mkstemp would force 0600)."""
    while True:
        tmp = _temp_name(path)
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file.
    A symlink is written through to its target; a target that is not a regular file is refused (ValueError).
    The file gets the mode a plain ``open(path, "w")`` would give: the existing file's, else 0666 less the umask."""
    path = _target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = None  # a new file keeps the temporary file's mode
    tmp = _create_temp(path)
    try:
        write(tmp)
        if mode is not None:  # given once written: a read-only file's mode would stop the write
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_writable(path: str | Path, what: str = "file") -> Path:
    """Raise ValueError, saying what to do, unless :func:`atomic_write` can write the file ``path``
    (``what="file"``) or files into the folder ``path`` (``what="folder"``), folders to create included.
    Tried for real: for a file, the very temporary file the write will create (name, length and folder), created
    and removed at once, so it holds for root, read-only mounts and /proc alike; call it before the work whose
    result goes there. Returns the path (for a file, the symlink's target that will be written)."""
    shown = _short(str(Path(path).expanduser()))
    try:
        if what == "file":
            path = _target(Path(path))
            if path.exists() and not os.access(path, os.W_OK):
                raise ValueError(
                    f"{shown} is read-only; make it writable (chmod u+w) or choose another name."
                )
        else:
            path = Path(os.path.realpath(Path(path).expanduser()))
            if path.exists() and not path.is_dir():
                raise ValueError(f"{shown} is a file, not a folder; give a folder (it is created if missing).")
        folder = path.parent if what == "file" else path
        existing, missing = folder, []
        while not existing.exists() and existing != existing.parent:
            existing, missing = existing.parent, [existing.name, *missing]
        if not existing.is_dir():
            raise ValueError(f"Cannot write {shown}: {_short(str(existing))} is a file, not a folder.")
        for name in missing:
            _check_name_length(name, path)
        try:  # the write's own temporary name (the longest name it uses) where its folder will be
            probe = _create_temp(existing / (path.name if what == "file" else "samples.npz"))
        except OSError as e:
            raise ValueError(
                f"Cannot write {shown}: no file can be created in {_short(str(existing))} ({e.strerror or e}). "
                f"Choose a {what} you can write to."
            ) from None
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
