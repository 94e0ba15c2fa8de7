"""Claims: how several workers that share one work dir split an evaluation's cells.

A *worker* is one ``matmtl evaluate`` process: a rank of ``torchrun``, or one of several
processes (on one machine or several) started with the same command and the same
``--work-dir``. Before a worker computes a cell (or makes the shared pretraining run, or
the scratch init), it claims it: it creates a *claim file* next to where the cell's
record will go (``fold<k>-frac<f>.claim`` beside ``fold<k>-frac<f>.json``; ``fold<k>.claim``
beside a pretraining run folder) with ``os.open(O_CREAT | O_EXCL)``, so of two workers
exactly one gets it. The file names its holder (host, pid, rank, start time). The claim
is removed once the record is written (atomically, as before), or when the computation
fails.

* A cell another live worker holds is skipped and looked at again later; a worker that
  needs its result (an anchor choice, the pretraining run, the final results) waits for
  it, saying so (``waiting for expt_gap/finetune_anchor_replay fold 2 (host:pid)``).
* A claim is *stale*, and taken over, when its holder is gone: same host and its pid no
  longer runs, or no refresh for ``ClaimSettings.lease`` seconds (a holder refreshes the
  file's modification time every quarter lease while it computes, from a thread). A
  takeover renames the stale file away first (one of two takers wins) and checks it
  moved the very claim it judged stale.
* A cell whose computation raised leaves a ``.failed`` file (the error, the worker).
  A worker that started before that failure and needs the cell stops with
  :class:`CellFailed` quoting it, instead of waiting; a worker started later tries the
  cell again.

Claims never decide *what* a cell's record holds (its fingerprint does): if two workers
ever compute one cell (a claim taken over from a worker that was only slow), they write
the same record, atomically."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, TypeVar

from ..errors import ConfigError, DistributedError

if TYPE_CHECKING:
    from ..distributed import World

T = TypeVar("T")
_HELD: set[str] = set()  # claim files held by this process (any Claims object)
NOTE_EVERY = 600.0  # seconds between two "still waiting" lines for one holder


@dataclass(frozen=True)
class ClaimSettings:
    """``lease``: seconds without a refresh after which a claim is stale (a holder
    refreshes it every ``lease / 4`` s while it computes); ``poll``: seconds between two
    looks at cells other workers hold."""

    lease: float = 600.0
    poll: float = 10.0

    def __post_init__(self) -> None:
        for name in ("lease", "poll"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"ClaimSettings.{name} must be > 0 (seconds), got {getattr(self, name)!r}")


class Busy(Exception):
    """(Internal) a cell is held by another live worker: the caller skips it for now."""

    def __init__(self, what: str, holder: str):
        super().__init__(f"{what} is being computed by {holder}")
        self.what, self.holder = what, holder


class CellFailed(DistributedError):
    """A cell this worker needs failed in another worker (the message quotes its error)."""


class WorkerStopped(DistributedError):
    """This worker was told to stop (SIGTERM: torchrun ending the ranks after one failed,
    or a job scheduler)."""


@dataclass(frozen=True)
class Worker:
    """Who holds a claim."""

    host: str
    pid: int
    started: float  # time.time() when the worker started
    rank: int = 0
    size: int = 1

    @classmethod
    def this(cls, world: "World | None" = None) -> "Worker":
        from ..distributed import World  # torch: only when a worker starts

        world = world or World.from_env()
        return cls(socket.gethostname(), os.getpid(), time.time(), world.rank, world.size)

    @property
    def label(self) -> str:
        return f"{self.host}:{self.pid}" + (f", rank {self.rank} of {self.size}" if self.size > 1 else "")

    def to_dict(self) -> dict:
        return {
            "host": self.host,
            "pid": self.pid,
            "rank": self.rank,
            "size": self.size,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started)),
        }


def claim_file(target: str | Path) -> Path:
    """The claim file of a record (``x.json`` -> ``x.claim``) or of a folder (``d`` -> ``d.claim``)."""
    return _beside(Path(target), ".claim")


def failure_file(target: str | Path) -> Path:
    """Where a failed computation of ``target`` leaves its error (``x.failed``, ``d.failed``)."""
    return _beside(Path(target), ".failed")


def _beside(target: Path, suffix: str) -> Path:
    return target.with_suffix(suffix) if target.suffix == ".json" else target.with_name(target.name + suffix)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine still runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    try:  # killed but not yet reaped by its parent: gone all the same
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


@dataclass(frozen=True)
class Holder:
    """What a claim file says, and whether it is stale (``stale``: why, or None)."""

    label: str
    stale: str | None
    raw: bytes


class Claims:
    """The claims of one worker: take, refresh, release, and :meth:`obtain` (compute a
    thing once among all workers, or wait for the one computing it)."""

    def __init__(self, settings: ClaimSettings | None = None, console=None, worker: Worker | None = None):
        self.s = settings or ClaimSettings()
        self.console = console
        self.worker = worker or Worker.this()
        self.held: dict[Path, bytes] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text)

    # -- one claim file ------------------------------------------------------------------
    def try_claim(self, path: Path, what: str | None = None) -> bool:
        """Take the claim file ``path`` (a stale one is taken over; ``what``: its name in
        the log); False when a live worker holds it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        info = {**self.worker.to_dict(), "claimed": time.strftime("%Y-%m-%dT%H:%M:%S"), "token": uuid.uuid4().hex}
        data = (json.dumps(info) + "\n").encode()
        for _ in range(5):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self.holder(path)
                if holder is None:
                    continue  # released meanwhile
                if holder.stale is None:
                    return False
                if self._take_over(path, holder.raw):
                    self._say(f"[yellow]taking over[/] {what or path} from {holder.label}: {holder.stale}")
                continue
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            with self._lock:
                self.held[path] = data
                _HELD.add(str(path))
            self._start_heartbeat()
            return True
        return False

    def holder(self, path: Path) -> Holder | None:
        """Who holds ``path`` and whether that claim is stale (None: no claim)."""
        try:
            raw = path.read_bytes()
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            info = json.loads(raw)
            host, pid = str(info["host"]), int(info["pid"])
            label = f"{host}:{pid}" + (f", rank {info['rank']} of {info['size']}" if info.get("size", 1) > 1 else "")
        except (ValueError, KeyError, TypeError):
            host, pid, label = None, None, "a worker still writing its claim"
        stale = None
        if host == self.worker.host and pid == os.getpid():
            if str(path) not in _HELD:
                stale = "left by an earlier evaluation in this process"
        elif host == self.worker.host and pid is not None and not pid_alive(pid):
            stale = f"its process {pid} is gone"
        if stale is None and age > self.s.lease:
            stale = f"no sign of life for {age:.0f} s (lease {self.s.lease:g} s)"
        return Holder(label, stale, raw)

    def _take_over(self, path: Path, judged: bytes) -> bool:
        """Remove the stale claim ``path`` whose content was ``judged``; True if this
        worker removed it. Renaming first makes one of several takers win; a claim that
        changed since it was judged (taken meanwhile) is put back."""
        moved = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex[:12]}")
        try:
            os.rename(path, moved)
        except FileNotFoundError:
            return False
        try:
            if moved.read_bytes() == judged:
                return True
            try:  # a fresh claim of another worker: give it back unless the name is taken again
                os.link(moved, path)
            except OSError:
                pass
            return False
        finally:
            moved.unlink(missing_ok=True)

    def release(self, path: Path) -> None:
        path = Path(path)
        with self._lock:
            data = self.held.pop(path, None)
            _HELD.discard(str(path))
        if data is None:
            return
        try:
            if path.read_bytes() == data:  # still ours (not taken over meanwhile)
                path.unlink()
        except FileNotFoundError:
            pass

    def refresh(self) -> None:
        """Renew the lease of every claim this worker holds (their modification time)."""
        with self._lock:
            held = dict(self.held)
        for path, data in held.items():
            try:
                if path.read_bytes() == data:
                    os.utime(path)
                    continue
            except FileNotFoundError:
                pass
            self._say(f"[yellow]warning:[/] lost the claim {path} (taken over by another worker?)")

    def _start_heartbeat(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()

        def beat() -> None:
            while not self._stop.wait(self.s.lease / 4):
                try:
                    self.refresh()
                except Exception:  # pragma: no cover - never let the heartbeat kill the worker
                    pass

        self._thread = threading.Thread(target=beat, name="matmtl-claims", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop refreshing; release whatever is still held."""
        self._stop.set()
        for path in list(self.held):
            self.release(path)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # -- failures ----------------------------------------------------------------------------
    def check_failed(self, what: str, target: Path) -> None:
        """Raise :class:`CellFailed` if ``target`` failed in another worker since this one started."""
        try:
            info = json.loads(failure_file(target).read_text())
        except (OSError, ValueError):
            return
        if not isinstance(info, dict) or float(info.get("time", 0)) < self.worker.started:
            return  # an earlier invocation's failure: try again
        raise CellFailed(
            f"{what} failed in worker {info.get('worker', '?')} at {info.get('when', '?')}: {info.get('error', '?')}; "
            f"worker {self.worker.label} needs it and stops too (finished cells are kept: fix the cause and run "
            "the same command again)"
        )

    def _record_failure(self, what: str, target: Path, exc: BaseException) -> None:
        info = {
            "what": what,
            "worker": self.worker.label,
            "time": time.time(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "error": f"{type(exc).__name__}: {exc}",
        }
        try:
            failure_file(target).write_text(json.dumps(info) + "\n")
        except OSError:  # pragma: no cover - the worker's own error is the one that matters
            pass

    # -- compute once among all workers ------------------------------------------------------
    def obtain(
        self, what: str, target: Path, done: Callable[[], T | None], compute: Callable[[], T], *, defer: bool
    ) -> tuple[T, str | None]:
        """``done()`` if it is there; else claim ``target`` and ``compute()`` it (as one
        plain process, :func:`~matmtl.distributed.single_process`), or, while another
        live worker holds it, raise :class:`Busy` (``defer``) or wait for it. Returns the
        result and how it came: ``"computed"`` here, the holder waited for, or None."""
        target = Path(target)
        claim = claim_file(target)
        waited, noted = None, 0.0
        while True:
            result = done()
            if result is not None:
                return result, waited
            self.check_failed(what, target)
            if self.try_claim(claim, what):
                try:
                    result = done()  # finished by another worker between the look and the claim
                    if result is not None:
                        return result, waited
                    from ..distributed import single_process

                    with single_process():
                        result = compute()
                    failure_file(target).unlink(missing_ok=True)
                    return result, "computed"
                except BaseException as exc:
                    if not isinstance(exc, (Busy, KeyboardInterrupt, SystemExit, WorkerStopped, CellFailed)):
                        self._record_failure(what, target, exc)
                    raise
                finally:
                    self.release(claim)
            holder = self.holder(claim)
            if holder is None:
                continue  # released meanwhile: look again at once
            if defer:
                raise Busy(what, holder.label)
            if waited != holder.label or time.time() - noted > NOTE_EVERY:
                self._say(f"[dim]waiting for {what} ({holder.label})[/]")
                waited, noted = holder.label, time.time()
            time.sleep(self.s.poll)


@contextmanager
def stopping_on_sigterm(worker: Worker) -> Iterator[None]:
    """Turn SIGTERM (torchrun ending the other ranks after one failed; a scheduler) into
    :class:`WorkerStopped`, so this worker releases its claims and says why it stopped.
    Only in the main thread (elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise WorkerStopped(
            f"worker {worker.label} stopped by {signal.Signals(signum).name}"
            + (" (torchrun ends every rank when one fails: that rank's error says why)" if worker.size > 1 else "")
            + "; its claims are released and finished cells are kept: run the same command again to continue"
        )

    old = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
