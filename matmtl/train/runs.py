"""Run folders: one per training run, never overwritten, with one writer at a time.

A run folder is claimed, not just made: :func:`claim_run_dir` creates it atomically
(``mkdir``; of two processes racing on one ``--out`` exactly one wins) and takes an
exclusive lock on ``<run>/.lock`` (``fcntl.flock``, held for the run's lifetime and
released by the kernel when the process dies, even by SIGKILL). The lock file names the
holder (pid, host, start time). :func:`open_for_resume` takes the same lock on an
existing run and refuses a run that a live process still holds.

A run that fails before it saved any state (bad settings or data found after the
folder was made, Ctrl-C in the first epoch) leaves no folder behind: there is
nothing in it to resume. Once a state or a checkpoint is saved, the folder stays and
:func:`resume_hint` gives the exact command that continues it.

>>> with claim_run_dir("pretrain", out) as run:      # run.path: the folder
...     train(run.path)                             # an exception before the first saved
...                                                 # state removes the folder
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MatmtlError
from ..io import cache_dir

RUN_KINDS = ("pretrain", "finetune")
LOCK_NAME = ".lock"
STATE_DIR = "state"  # where the trainer saves its resumable state
FINAL_FILES = ("model.json", "model.safetensors")


class RunBusyError(MatmtlError):
    """The run folder is being written by another live process (or claimed by one)."""


def runs_root() -> Path:
    return cache_dir() / "runs"


def _check_kind(kind: str) -> None:
    if kind not in RUN_KINDS:
        raise MatmtlError(f"run kind must be one of {', '.join(RUN_KINDS)}, got {kind!r}")


# -- the lock ------------------------------------------------------------------------


def _holder_info(kind: str) -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "kind": kind, "since": time.strftime("%Y-%m-%dT%H:%M:%S")}


def read_lock_info(run_dir: str | Path) -> dict | None:
    """What the lock file says about its (last) holder, or None."""
    try:
        info = json.loads((Path(run_dir) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _describe_holder(run_dir: Path) -> str:
    info = read_lock_info(run_dir)
    if not info:
        return "another process"
    return (
        f"process {info.get('pid', '?')} on {info.get('host', '?')} "
        f"({info.get('kind', 'run')} since {info.get('since', '?')})"
    )


class _Lock:
    """An flock on ``<run>/.lock``, held until :meth:`release` (or the process ends)."""

    def __init__(self, fd: int, path: Path):
        self.fd, self.path = fd, path

    @classmethod
    def acquire(cls, run_dir: Path, kind: str, *, create_exclusive: bool) -> "_Lock":
        import fcntl

        path = run_dir / LOCK_NAME
        for _ in range(20):
            flags = os.O_RDWR | os.O_CREAT | (os.O_EXCL if create_exclusive else 0)
            try:
                fd = os.open(path, flags, 0o644)
            except FileExistsError:
                raise RunBusyError(
                    f"{run_dir}: claimed by {_describe_holder(run_dir)}; a run folder has one writer "
                    "(choose another --out)"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise RunBusyError(
                        f"{run_dir}: still being written by {_describe_holder(run_dir)}; wait for it to "
                        "finish or stop it first (a run folder has one writer)"
                    ) from None
                raise
            # the file we locked must still be the one under the name (a releasing holder
            # may have unlinked it between our open and our lock): else try again
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                lock = cls(fd, path)
                lock.write_info(kind)
                return lock
            os.close(fd)
            create_exclusive = False
        raise RunBusyError(f"{run_dir}: could not take the run lock (it keeps changing hands)")

    def write_info(self, kind: str) -> None:
        data = (json.dumps(_holder_info(kind)) + "\n").encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def release(self, remove: bool = True) -> None:
        import fcntl

        if self.fd < 0:
            return
        if remove:  # unlink while still locked: a waiter re-checks the inode (see acquire)
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = -1


def lock_is_held(run_dir: str | Path) -> bool:
    """True if a live process holds the run's lock right now."""
    import fcntl

    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


# -- claiming a new run, resuming an old one --------------------------------------------


@dataclass
class RunDir:
    """A run folder this process holds the lock of. ``created``: this process made the
    folder (so it may remove it again)."""

    path: Path
    kind: str
    created: bool
    resumed: bool = False
    _lock: _Lock | None = field(default=None, repr=False)
    writer: bool = True  # False: another process (rank 0 of a data-parallel run) writes it

    def __fspath__(self) -> str:
        return str(self.path)

    def has_saved_state(self) -> bool:
        """A resumable state or a final checkpoint was saved into the folder."""
        if any((self.path / f).exists() for f in FINAL_FILES):
            return True
        state = self.path / STATE_DIR
        return state.is_dir() and any(state.iterdir())

    @property
    def held(self) -> bool:
        return self._lock is not None and self._lock.fd >= 0

    def release(self) -> None:
        """Give up the lock (idempotent)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def discard(self) -> None:
        """Remove what this run wrote: the whole folder when this process made it, else
        its contents (an empty folder the user made stays). Refuses once state is saved."""
        if self.has_saved_state():
            raise MatmtlError(f"{self.path}: holds a saved state; not removed")
        if not self.writer:
            raise MatmtlError(f"{self.path}: another process writes this run folder; not removed here")
        self.release()
        shutil.rmtree(self.path, ignore_errors=True)
        if not self.created:  # the user's own empty folder: leave it, empty
            self.path.mkdir(exist_ok=True)

    def resume_hint(self) -> str:
        return resume_hint(self.path, self.kind)

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None and self.writer and not self.resumed and not self.has_saved_state():
            self.discard()  # failed before anything worth resuming: leave no folder
        else:
            self.release()
        return False


def claim_run_dir(kind: str, out: str | Path | None = None) -> RunDir:
    """Create and lock a new run folder; use it as a context manager (or call
    ``release()``). ``out`` must not exist, or be an empty folder; default:
    ``<cache>/runs/<kind>-<timestamp>[-n]``. Of several processes claiming one ``out``
    at once, exactly one wins; the others get :class:`RunBusyError` (or MatmtlError if
    the folder already holds a run).

    How: the folder is built under a temporary name beside ``out`` with its lock file
    already locked, then renamed to ``out`` (an atomic rename, which fails when ``out``
    is a non-empty folder), so no other process ever sees the folder unlocked.

    Leaving the ``with`` block by an exception before any state was saved removes the
    folder (an empty folder the user made is left empty): a run that fails validation
    leaves nothing behind. Otherwise the lock is released and the folder stays."""
    _check_kind(kind)
    if out is None:
        root = runs_root()
        root.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for i in range(1000):
            path = root / (f"{kind}-{stamp}" + (f"-{i + 1}" if i else ""))
            if path.exists():
                continue
            try:
                return _claim(path, kind)
            except (RunBusyError, _Taken):
                continue
        raise MatmtlError(f"could not create a new run folder under {root}")
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise MatmtlError(f"{path} is a file, not a run folder (choose another --out)")
    try:
        return _claim(path, kind)
    except _Taken:
        if lock_is_held(path):
            raise RunBusyError(
                f"{path}: claimed by {_describe_holder(path)}; a run folder has one writer (choose another --out)"
            ) from None
        raise MatmtlError(
            f"{path} already exists and is not empty: a new run never overwrites a run folder "
            f"(choose another --out, or continue that run: {resume_hint(path, kind)})"
        ) from None


class _Taken(Exception):
    """The target name is a non-empty folder."""


def _claim(path: Path, kind: str) -> RunDir:
    from ..io import current_umask

    path.parent.mkdir(parents=True, exist_ok=True)
    existed = path.is_dir()
    if existed and any(path.iterdir()):
        raise _Taken()
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.claim-", dir=path.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # a run folder follows the umask (mkdtemp makes 0700)
    lock = _Lock.acquire(tmp, kind, create_exclusive=True)
    try:
        os.rename(tmp, path)  # atomic; replaces an empty folder, fails on a non-empty one
    except OSError as exc:
        lock.release(remove=False)
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise _Taken() from None
        if exc.errno == errno.ENOTDIR:
            raise MatmtlError(f"{path} is a file, not a run folder (choose another --out)") from None
        raise
    lock.path = path / LOCK_NAME
    return RunDir(path, kind, created=not existed, _lock=lock)


def open_for_resume(run_dir: str | Path, kind: str | None = None) -> RunDir:
    """Lock an unfinished run folder to continue it. Refuses (RunBusyError, naming the
    process) a run that a live process still holds: two writers would interleave their
    states. A lock file left by a process that died does not block. Also refuses a folder
    that is not a run (no config.json) or a finished run (model.json). ``kind`` (if
    given) must match the run's config. Leaving a ``with`` block never removes a resumed
    folder."""
    path = Path(run_dir).expanduser()
    if not path.is_dir():
        raise MatmtlError(f"resume: {path} is not a run folder (no such folder)")
    if not (path / "config.json").is_file():
        raise MatmtlError(f"resume: {path} is not a run folder (no config.json)")
    if (path / "model.json").exists():
        raise MatmtlError(f"resume: {path} already finished (model.json is there); nothing to resume")
    found = kind
    try:
        cfg = json.loads((path / "config.json").read_text())
        found = cfg.get("kind", kind) if isinstance(cfg, dict) else kind
    except (OSError, ValueError):
        pass
    if kind is not None:
        _check_kind(kind)
        if found != kind:
            raise MatmtlError(f"resume: {path} is a {found} run, not a {kind} run ({resume_hint(path, found)})")
    lock = _Lock.acquire(path, found or "run", create_exclusive=False)
    return RunDir(path, found or "run", created=False, resumed=True, _lock=lock)


def follow_run_dir(run_dir: str | Path, kind: str) -> RunDir:
    """A run folder as the other processes of a data-parallel run see it: rank 0 holds
    its lock and writes it; these processes never write or remove it."""
    return RunDir(Path(run_dir), kind, created=False, writer=False)


def resume_hint(run_dir: str | Path, kind: str) -> str:
    """The exact command that continues the run in ``run_dir``."""
    return f"matmtl {kind} --resume --out {shlex.quote(str(Path(run_dir).expanduser()))}"


def interrupted_message(run_dir: str | Path, kind: str) -> str:
    """What to print when a run stops early (Ctrl-C, an error after a saved state): where
    the state is and how to continue, or that nothing was kept."""
    path = Path(run_dir)
    state = path / STATE_DIR
    if state.is_dir() and any(state.iterdir()):
        epoch = ""
        try:
            meta = json.loads((state / "state.json").read_text())
            if isinstance(meta, dict) and "epoch" in meta:
                epoch = f" (after epoch {meta['epoch']})"
        except (OSError, ValueError):
            pass
        return f"{kind} stopped; its state is saved in {state}{epoch}. Continue it with: {resume_hint(path, kind)}"
    if path.exists():
        return f"{kind} stopped before its first saved state; nothing to resume in {path}"
    return f"{kind} stopped before its first saved state; its run folder {path} was removed"


# -- older API, kept ---------------------------------------------------------------------


def new_run_dir(kind: str, out: str | Path | None = None) -> Path:
    """A fresh, empty run folder (atomically created; no lock held afterwards). Prefer
    :func:`claim_run_dir`, which also holds the folder's lock for the run's lifetime."""
    run = claim_run_dir(kind, out)
    run.release()
    return run.path


def list_runs(kind: str, complete: bool = True) -> list[Path]:
    """Run folders of a kind under the user cache, oldest first. ``complete``: only
    those with a final checkpoint (model.json); else only unfinished ones."""
    root = runs_root()
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(f"{kind}-") and (p / "config.json").exists():
            if (p / "model.json").exists() == complete:
                out.append(p)
    return sorted(out, key=lambda p: ((p / "config.json").stat().st_mtime, p.name))


def latest_run(kind: str, complete: bool = True) -> Path | None:
    runs = list_runs(kind, complete)
    return runs[-1] if runs else None


__all__ = [
    "RUN_KINDS",
    "RunDir",
    "RunBusyError",
    "claim_run_dir",
    "open_for_resume",
    "follow_run_dir",
    "resume_hint",
    "interrupted_message",
    "lock_is_held",
    "read_lock_info",
    "new_run_dir",
    "list_runs",
    "latest_run",
    "runs_root",
]
