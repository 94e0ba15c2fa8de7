"""Small file helpers shared by the data cache, checkpoints and run folders."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable

from .errors import MatmtlError


def cache_dir() -> Path:
    """matmtl's user cache: $MATMTL_CACHE_DIR, else $XDG_CACHE_HOME/matmtl, else ~/.cache/matmtl."""
    if os.environ.get("MATMTL_CACHE_DIR"):
        return Path(os.environ["MATMTL_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "matmtl"


class WriteError(OSError, MatmtlError):
    """A file could not be written; the previous file under that name (if any) is unchanged.
    An OSError with the ``errno`` of the failure (e.g. ENOSPC), and a MatmtlError, so the
    command line prints it as one line."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (thread-safe)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: the classic read-by-setting (restored at once)
    os.umask(mask)
    return mask


def _final_mode(path: Path) -> int:
    """The mode a freshly written ``path`` gets: an existing file's mode (a file a group
    was given keeps it), else what ``open()`` would give under the user's umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~current_umask()


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path`` and rename it into place,
    so a killed process never leaves a half-written file under the final name.

    The file gets the permissions ``open()`` would give (the user's umask; an existing
    file keeps its mode), not the 0600 of a temporary file. A write that fails part-way
    (a full disk: ENOSPC, a quota, an exception in ``write``) leaves the previous file
    intact and no temporary file behind; OS errors are raised as :class:`WriteError`
    naming the file, with the original errno."""
    path = Path(path)
    if path.is_dir():
        raise WriteError(errno.EISDIR, f"{path} is a folder, not a file name", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _final_mode(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, path)
    except BaseException as exc:
        tmp_path.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            why = exc.strerror or str(exc)
            raise WriteError(
                exc.errno or errno.EIO, f"could not write {path}: {why}; the previous file is unchanged", str(path)
            ) from exc
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    return atomic_write(path, lambda p: p.write_text(text))


def _json_default(o: Any):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def sha256_of(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\x00")  # separator: ("ab","c") and ("a","bc") hash differently
    return h.hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
