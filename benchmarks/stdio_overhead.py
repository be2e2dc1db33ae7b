"""Start-up and per-call overhead of tariti-mcp over stdio, each beside its floor.

1. Spawn to the first ``tools/list`` answer: ``tariti-mcp serve`` against a bare ``MCPServer``
   with one tool, both over stdio.
2. One ``call_amocrm_api`` GET over stdio against a direct ``httpx`` request for the same page
   of the same emulator: the difference is what the MCP layer and our client add.

Run: python benchmarks/stdio_overhead.py [--runs 7] [--calls 60] [--pause 0.2]

With --pause 0 the calls come back to back and the 7 requests/second amoCRM limit paces them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

from tariti_mcp.sandbox import Sandbox

BARE_SERVER = textwrap.dedent(
    """
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("bare")

    @server.tool()
    async def echo(text: str) -> str:
        return text

    server.run()
    """
)


class StdioPeer:
    """A server process spoken to with raw JSON-RPC lines, as an MCP host does."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self._next_id = 0

    def request(self, method: str, params: dict | None = None) -> dict:
        self._next_id += 1
        message = {"jsonrpc": "2.0", "id": self._next_id, "method": method}
        if params is not None:
            message["params"] = params
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"server exited during {method}")
            answer = json.loads(line)
            if answer.get("id") == self._next_id:
                return answer

    def notify(self, method: str) -> None:
        self.process.stdin.write(json.dumps({"jsonrpc": "2.0", "method": method}) + "\n")
        self.process.stdin.flush()

    def initialize(self) -> None:
        self.request(
            "initialize",
            {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "bench", "version": "1"},
            },
        )
        self.notify("notifications/initialized")

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def startup(command: list[str], env: dict[str, str]) -> float:
    peer = StdioPeer(command, env)
    peer.initialize()
    peer.request("tools/list")
    elapsed = time.perf_counter() - peer.started
    peer.close()
    return elapsed


def milliseconds(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:8.1f} ms (min {min(samples) * 1000:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="start-ups of each server")
    parser.add_argument("--calls", type=int, default=60, help="tool calls and direct requests")
    parser.add_argument(
        "--pause",
        type=float,
        default=0.2,
        help="seconds between calls, so the 7/s amoCRM limiter is idle (0: back to back)",
    )
    args = parser.parse_args()

    with Sandbox(seed=1, calls=500) as sandbox, tempfile.TemporaryDirectory() as scratch:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("AMOCRM_", "MOIZVONKI_", "TARITI_"))
        }
        env.update(sandbox.env)
        env["TARITI_DB_PATH"] = str(Path(scratch) / "bench.db")
        bare = Path(scratch) / "bare_server.py"
        bare.write_text(BARE_SERVER)
        ours = [sys.executable, "-m", "tariti_mcp", "serve"]

        startup([sys.executable, str(bare)], env)  # warm the file cache for both
        bare_times = [startup([sys.executable, str(bare)], env) for _ in range(args.runs)]
        our_times = [startup(ours, env) for _ in range(args.runs)]

        peer = StdioPeer(ours, env)
        peer.initialize()
        arguments = {"path": "/api/v4/leads", "query": {"limit": 1}}
        tool_times = []
        for _ in range(args.calls):
            time.sleep(args.pause)
            started = time.perf_counter()
            answer = peer.request("tools/call", {"name": "call_amocrm_api", "arguments": arguments})
            tool_times.append(time.perf_counter() - started)
            assert not answer["result"]["isError"], answer
        peer.close()

        direct_times = []
        headers = {"Authorization": f"Bearer {sandbox.env['AMOCRM_API_KEY']}"}
        with httpx.Client(base_url=sandbox.amocrm_url, headers=headers) as http:
            for _ in range(args.calls):
                time.sleep(args.pause)
                started = time.perf_counter()
                http.get("/api/v4/leads", params={"limit": 1}).raise_for_status()
                direct_times.append(time.perf_counter() - started)

    print(f"spawn to first tools/list over stdio ({args.runs} runs, median)")
    print(f"  bare MCPServer, one tool      {milliseconds(bare_times)}")
    print(f"  tariti-mcp serve              {milliseconds(our_times)}")
    print(
        f"GET /api/v4/leads?limit=1 against the emulator ({args.calls} calls, median, "
        f"{args.pause}s apart)"
    )
    print(f"  direct httpx request          {milliseconds(direct_times)}")
    print(f"  call_amocrm_api over stdio    {milliseconds(tool_times)}")
    overhead = statistics.median(tool_times) - statistics.median(direct_times)
    print(f"  overhead per call             {overhead * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
