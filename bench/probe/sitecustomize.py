"""Where does a broker's event loop stall? Put this directory first on PYTHONPATH of a
benchmark (the broker processes it starts inherit it):

    PYTHONPATH=bench/probe BENCH_PROBE_DIR=/tmp/probe .venv/bin/python bench/sessions.py ...

Each `broker serve` process then writes, at exit, BENCH_PROBE_DIR/stalls-<pid>.txt: every
event-loop callback that ran longer than 3 ms (what it was, when, how long) and every garbage
collection longer than 5 ms. `python bench/probe/report.py DIR START SECONDS` sums them for a
window (e.g. a benchmark's typing phase). Other processes are left alone.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
import time

STALL = 0.003  # seconds: a callback longer than this is a stall
GC_PAUSE = 0.005


def _install(directory: str) -> None:
    import asyncio.events

    stalls: list[tuple[float, float, str]] = []
    started: dict[str, float] = {}

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started["gc"] = time.perf_counter()
            return
        took = time.perf_counter() - started.get("gc", time.perf_counter())
        if took > GC_PAUSE:
            stalls.append((time.time(), took, f"gc generation {info['generation']}"))

    run = asyncio.events.Handle._run

    def timed_run(self: asyncio.events.Handle) -> None:
        start = time.perf_counter()
        try:
            run(self)
        finally:
            took = time.perf_counter() - start
            if took > STALL:
                stalls.append((time.time(), took, _name(self)))

    def dump() -> None:
        path = os.path.join(directory, f"stalls-{os.getpid()}.txt")
        with open(path, "w", encoding="utf-8") as out:
            out.write(" ".join(sys.argv) + "\n")
            for when, took, what in stalls:
                out.write(f"{when:.3f} {took * 1000:.2f} {what}\n")

    gc.callbacks.append(on_gc)
    asyncio.events.Handle._run = timed_run  # type: ignore[method-assign]
    atexit.register(dump)


def _name(handle: object) -> str:
    callback = getattr(handle, "_callback", None)
    owner = getattr(callback, "__self__", None)
    if owner is not None and hasattr(owner, "get_coro"):
        try:
            return str(owner.get_coro().__qualname__)
        except AttributeError:
            pass
    return str(getattr(callback, "__qualname__", None) or repr(callback)[:120])


if os.environ.get("BENCH_PROBE_DIR") and "serve" in sys.argv:
    _install(os.environ["BENCH_PROBE_DIR"])
