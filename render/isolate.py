"""Rendering in worker processes that run inside CPU-time, memory and wall-clock limits.

Templates are untrusted code, and the size caps of `render.limits` cannot foresee every
runaway (a loop of a billion steps is small at every step). So previews, template checks and
the pipeline render in a `LimitedPool`: each call (a whole batch, so limits cost nothing per
label) runs in a worker process under

* a CPU-time limit (``RLIMIT_CPU``, soft, from the CPU the worker has used so far): its
  ``SIGXCPU`` raises `ResourceLimit` inside the running template, so the error names the
  template line;
* a memory limit (``RLIMIT_AS``: the worker's size at the start of the call plus the budget):
  an allocation past it fails with `MemoryError`, reported like the others;
* a wall-clock timeout: an interval timer raises `ResourceLimit` in the worker, and should the
  worker be stuck in C code, the parent kills it after a grace period and starts another.

The caller gets `LimitExceeded` naming the limit (and the template and line when known); the
worker stays usable (or is replaced), and the calling process never runs template code at
all, so a server keeps answering while a template bomb burns a worker's budget.
`LimitedPool.bisect` finds the items of a batch that hit a limit by splitting it in halves.
Linux/Unix only (``resource``, ``setitimer``), as the server is.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import pickle
import queue
import resource
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any, Final, TypeVar

__all__ = ["ProcessLimits", "LimitExceeded", "ResourceLimit", "LimitedPool", "TemplateLimit"]

T = TypeVar("T")
A = TypeVar("A")
R = TypeVar("R")

_GRACE_S: Final = 2.0  # the parent's kill comes this long after the worker's own timer
_START_TIMEOUT_S: Final = 180.0  # a cold worker imports numpy/numba and may compile kernels
_MAX_LIMIT_HITS: Final = 2  # single items that hit a limit before the rest of a batch gives up


@dataclass(frozen=True, slots=True)
class ProcessLimits:
    """Budget of one call (one batch): CPU seconds, extra memory in MB, wall-clock seconds."""

    cpu_s: float = 20.0
    memory_mb: int = 1024
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("cpu_s", "timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
        if not isinstance(self.memory_mb, int) or isinstance(self.memory_mb, bool) or self.memory_mb < 64:
            raise ValueError(f"memory_mb must be an integer >= 64, got {self.memory_mb!r}")

    def reason(self, limit: str) -> str:
        return {"cpu": f"CPU time limit of {self.cpu_s:g} s reached",
                "memory": f"memory limit of {self.memory_mb} MB reached",
                "time": f"wall-clock limit of {self.timeout_s:g} s reached"}.get(limit, limit)


class ResourceLimit(BaseException):
    """Raised inside a worker's running code when its CPU or wall-clock budget runs out.

    A BaseException, so the ``except Exception`` boundaries that keep one bad label from
    stopping a batch do not swallow it: a limit is the batch's, and `LimitedPool.bisect`
    finds the label."""

    def __init__(self, limit: str) -> None:
        super().__init__(limit)
        self.limit = limit


class TemplateLimit(Exception):
    """A `ResourceLimit` (or `MemoryError`) located in a template: its name and line.
    `render.templates` raises it; it passes the per-label boundaries of `render.batch`."""

    def __init__(self, limit: str, template: str, line: int | None) -> None:
        super().__init__(limit, template, line)
        self.limit = limit
        self.template = template
        self.line = line


class LimitExceeded(Exception):
    """A call that ran out of its budget: which limit, why, and where when known."""

    def __init__(self, limit: str, reason: str, template: str | None = None, line: int | None = None) -> None:
        self.limit = limit
        self.reason = reason
        self.template = template
        self.line = line
        where = "" if template is None else f"{template}:{line}: " if line is not None else f"{template}: "
        super().__init__(f"{where}limit error: {reason}")


# --- the worker process ----------------------------------------------------------------------

_armed = False  # a signal that lands after a call ended (its timer raced it) is ignored


def _raise(limit: str) -> Callable[[int, FrameType | None], None]:
    def handler(_signum: int, _frame: FrameType | None) -> None:
        if _armed:
            raise ResourceLimit(limit)
    return handler


def _address_space() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


def _arm(limits: ProcessLimits) -> None:
    global _armed
    used = resource.getrusage(resource.RUSAGE_SELF)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = math.ceil(used.ru_utime + used.ru_stime + limits.cpu_s)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    try:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        soft = _address_space() + limits.memory_mb * 1024 * 1024
        if hard == resource.RLIM_INFINITY or soft < hard:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    except OSError:  # no /proc: CPU and wall-clock limits still hold
        pass
    _armed = True
    signal.setitimer(signal.ITIMER_REAL, limits.timeout_s)


def _disarm() -> None:
    global _armed
    _armed = False
    signal.setitimer(signal.ITIMER_REAL, 0)
    for which in (resource.RLIMIT_CPU, resource.RLIMIT_AS):
        _, hard = resource.getrlimit(which)
        resource.setrlimit(which, (hard, hard))


def _run(fn: Callable[[Any], Any], arg: Any, limits: ProcessLimits) -> tuple[Any, ...]:
    try:
        try:
            _arm(limits)
            result = fn(arg)
        finally:
            _disarm()
    except ResourceLimit as exc:
        return ("limit", exc.limit, limits.reason(exc.limit), None, None)
    except TemplateLimit as exc:
        return ("limit", exc.limit, limits.reason(exc.limit), exc.template, exc.line)
    except MemoryError:
        return ("limit", "memory", limits.reason("memory"), None, None)
    except Exception as exc:  # noqa: BLE001 - the worker's boundary: the caller gets it
        try:
            pickle.dumps(exc)
        except Exception:  # noqa: BLE001 - an exception that cannot travel: its text does
            return ("error", RuntimeError(f"{type(exc).__name__}: {exc}"))
        return ("error", exc)
    return ("ok", result)


def _worker_main(conn: Connection, initializer: Callable[[], None] | None) -> None:
    """A worker's loop: run what the parent sends, inside the limits it sends with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGXCPU, _raise("cpu"))
    signal.signal(signal.SIGALRM, _raise("time"))
    if initializer is not None:
        initializer()
    conn.send(("ready",))
    while True:
        try:
            fn, arg, limits = conn.recv()
        except (EOFError, OSError):
            return
        conn.send(_run(fn, arg, limits))


# --- the parent side -------------------------------------------------------------------------

class _Worker:
    def __init__(self, pool: LimitedPool) -> None:
        self._pool = pool
        self._proc: Any = None
        self._conn: Connection | None = None

    def _start(self) -> Connection:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker_main, args=(child, self._pool.initializer),
                           name=f"{self._pool.name}-worker", daemon=True)
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        if not parent.poll(_START_TIMEOUT_S):
            self.stop()
            raise RuntimeError(f"{self._pool.name} worker did not start within {_START_TIMEOUT_S:g} s")
        try:
            parent.recv()
        except EOFError:
            code = proc.exitcode
            self.stop()
            raise RuntimeError(f"{self._pool.name} worker died while starting (exit {code})") from None
        return parent

    def call(self, fn: Callable[[A], R], arg: A, limits: ProcessLimits) -> R:
        conn = self._conn if self._proc is not None and self._proc.is_alive() else self._start()
        assert conn is not None
        conn.send((fn, arg, limits))
        if not conn.poll(limits.timeout_s + _GRACE_S):
            self.stop()
            raise LimitExceeded("time", limits.reason("time") + " (the worker was stopped)")
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            code = self._proc.exitcode if self._proc is not None else None
            self.stop()
            if self._pool.closed:
                raise LimitExceeded("crash", f"the {self._pool.name} pool was closed") from None
            if code == -signal.SIGKILL:  # the kernel's out-of-memory killer, or a hard limit
                raise LimitExceeded("memory", limits.reason("memory") + " (the worker was killed)") from None
            raise LimitExceeded("crash", f"the render worker died (exit {code})") from None
        if msg[0] == "ok":
            return msg[1]  # type: ignore[no-any-return]
        if msg[0] == "limit":
            if msg[1] == "memory":  # its heap may stay large: a fresh worker for the next call
                self.stop()
            raise LimitExceeded(msg[1], msg[2], msg[3], msg[4])
        raise msg[1]  # the call's own exception, as if it had run here

    def kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.is_alive():
            proc.kill()

    def stop(self) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            conn.close()
        if proc is not None:
            if proc.is_alive():
                proc.kill()
            proc.join(5)


class LimitedPool:
    """`workers` processes started on first use (and again after one is stopped), each call
    inside `limits`. `call` blocks (any thread); `run` and `bisect` await from asyncio."""

    def __init__(self, workers: int, limits: ProcessLimits, *,
                 initializer: Callable[[], None] | None = None, name: str = "render") -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.limits = limits
        self.initializer = initializer
        self.name = name
        self.workers = workers
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._all = [_Worker(self) for _ in range(workers)]
        for w in self._all:
            self._idle.put(w)
        self._threads = ThreadPoolExecutor(workers, thread_name_prefix=f"{name}-pool")
        self._closed = threading.Event()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def call(self, fn: Callable[[A], R], arg: A) -> R:
        """``fn(arg)`` in a worker; `LimitExceeded` when it ran out of budget."""
        if self._closed.is_set():
            raise RuntimeError(f"{self.name} pool is closed")
        worker = self._idle.get()
        try:
            return worker.call(fn, arg, self.limits)
        finally:
            self._idle.put(worker)

    async def run(self, fn: Callable[[A], R], arg: A) -> R:
        return await asyncio.get_running_loop().run_in_executor(self._threads, self.call, fn, arg)

    def bisect_sync(self, fn: Callable[[A], list[R]], items: Sequence[T], make: Callable[[Sequence[T]], A],
                    fail: Callable[[T, LimitExceeded], R]) -> list[R]:
        """``fn(make(items))`` (one result per item); when that hits a limit, the halves are
        run again, down to the single items that hit it, which get ``fail(item, error)``.
        After `_MAX_LIMIT_HITS` such items (a template that bombs on every product), the
        items still unresolved fail with that error instead of each spending a budget."""
        hits: list[LimitExceeded] = []

        def go(part: Sequence[T]) -> list[R]:
            if hits and len(hits) >= _MAX_LIMIT_HITS:
                return [fail(item, hits[-1]) for item in part]
            try:
                return self.call(fn, make(part))
            except LimitExceeded as exc:
                if len(part) == 1:
                    hits.append(exc)
                    return [fail(part[0], exc)]
                mid = len(part) // 2
                return go(part[:mid]) + go(part[mid:])

        return go(items)

    async def bisect(self, fn: Callable[[A], list[R]], items: Sequence[T], make: Callable[[Sequence[T]], A],
                     fail: Callable[[T, LimitExceeded], R]) -> list[R]:
        return await asyncio.get_running_loop().run_in_executor(
            self._threads, self.bisect_sync, fn, items, make, fail)

    def close(self) -> None:
        """Stop every worker at once: a call in progress ends with `LimitExceeded` (kind
        ``crash``) instead of holding a shutting-down server for its whole budget."""
        self._closed.set()
        for w in self._all:
            w.kill()
        self._threads.shutdown(wait=True, cancel_futures=True)
        for w in self._all:
            w.stop()

    def pids(self) -> list[int]:
        """The running workers' process ids (for tests and metrics)."""
        return [w._proc.pid for w in self._all if w._proc is not None]
