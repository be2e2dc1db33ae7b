"""The sandbox in a process of its own, for the sync benchmarks.

The emulators then do not share the benchmark's interpreter lock, and their own counters
(requests answered, seconds spent answering) can still be read between steps.
"""

from __future__ import annotations

import multiprocessing
import time
from multiprocessing.connection import Connection
from typing import Any


def _serve(pipe: Connection, seed: int, calls: int, days: int) -> None:
    from tariti_mcp.sandbox import Sandbox

    started = time.perf_counter()
    sandbox = Sandbox(seed=seed, calls=calls, days=days).start()
    assert sandbox.moizvonki is not None
    pipe.send(
        {
            "env": sandbox.env,
            "calls": len(sandbox.moizvonki.calls),
            "start_seconds": time.perf_counter() - started,
        }
    )
    while True:
        command = pipe.recv()
        if command == "stats":
            pipe.send(
                {
                    "requests": len(sandbox.moizvonki.requests),
                    "busy_seconds": sandbox.moizvonki.busy_seconds,
                }
            )
        elif command == "stop":
            sandbox.stop()
            pipe.send("stopped")
            return


class SandboxProcess:
    """``with SandboxProcess(calls=200_000, days=365) as sandbox: sandbox.env ...``"""

    def __init__(self, seed: int = 1, calls: int = 200_000, days: int = 365) -> None:
        self.seed, self.calls, self.days = seed, calls, days
        self.env: dict[str, str] = {}
        self.info: dict[str, Any] = {}

    def __enter__(self) -> SandboxProcess:
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child, self.seed, self.calls, self.days), daemon=True
        )
        self._process.start()
        self.info = self._pipe.recv()
        self.env = self.info["env"]
        return self

    def stats(self) -> dict[str, Any]:
        self._pipe.send("stats")
        return self._pipe.recv()

    def __exit__(self, *exc: object) -> None:
        self._pipe.send("stop")
        self._pipe.recv()
        self._process.join(10)
