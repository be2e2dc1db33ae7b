"""Peak memory of a first sync of a year of calls, against the server's idle memory.

1. Idle: ``tariti-mcp serve`` over stdio, configured for the sandbox, after ``initialize`` and
   ``tools/list``: its resident set (VmRSS).
2. Sync: a fresh process imports the server's modules, opens the store and the client, notes
   its resident set, runs ``sync_all`` over every call (200 000 over 365 days by default), and
   samples its resident set as the days go by; the peak is the kernel's high-water mark (VmHWM).

The requirement: the sync's peak stays within 100 MB above the server's idle memory, and flat
while the calls stream in (pages are written as they come, never held).

Run: python benchmarks/sync_memory.py [--calls 200000] [--days 365]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from stdio_overhead import StdioPeer  # noqa: E402
from sync_sandbox import SandboxProcess  # noqa: E402

LIMIT_MB = 100

SYNC = textwrap.dedent(
    """
    import json, sys, time

    import anyio

    import tariti_mcp.server  # the modules a running server holds
    from tariti_mcp.moizvonki.client import MoizvonkiClient
    from tariti_mcp.moizvonki.sync import DAY, sync_all
    from tariti_mcp.store import Store


    def status(field):
        with open("/proc/self/status") as lines:
            for line in lines:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
        raise KeyError(field)


    async def main(url, user, key, path, days):
        store = Store(path)
        client = MoizvonkiClient(url, user, key)
        before = status("VmRSS")
        samples = []

        async def progress(done, total, message):
            if total and (not samples or done - samples[-1][0] >= total / 20):
                samples.append((done, total, status("VmRSS")))

        started = time.perf_counter()
        report = await sync_all(client, store, since=int(time.time()) - days * DAY - DAY,
                                progress=progress)
        seconds = time.perf_counter() - started
        stored = next(store.query("SELECT count(*) AS n FROM moizvonki_calls"))["n"]
        await client.aclose()
        print(json.dumps({
            "before": before, "peak": status("VmHWM"), "after": status("VmRSS"),
            "samples": samples, "stored": stored, "requests": report.requests,
            "seconds": seconds,
        }))


    anyio.run(main, *sys.argv[1:5], int(sys.argv[5]))
    """
)


def idle_server_rss(env: dict[str, str]) -> tuple[float, float]:
    """VmRSS and VmHWM of ``tariti-mcp serve`` after start-up and one tools/list, in MB."""
    peer = StdioPeer([sys.executable, "-m", "tariti_mcp", "serve"], env)
    try:
        peer.initialize()
        peer.request("tools/list")
        fields = {}
        with open(f"/proc/{peer.process.pid}/status") as lines:
            for line in lines:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    fields[name] = int(value.split()[0]) / 1024
        return fields["VmRSS"], fields["VmHWM"]
    finally:
        peer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--days", type=int, default=365)
    args = parser.parse_args()

    with SandboxProcess(calls=args.calls, days=args.days) as sandbox:
        with tempfile.TemporaryDirectory() as scratch:
            env = {
                key: value
                for key, value in os.environ.items()
                if not key.startswith(("AMOCRM_", "MOIZVONKI_", "TARITI_"))
            }
            env.update(sandbox.env)
            env["TARITI_DB_PATH"] = str(Path(scratch) / "idle.db")
            idle, idle_peak = idle_server_rss(env)

            command = [
                sys.executable,
                "-c",
                SYNC,
                sandbox.env["MOIZVONKI_BASE_URL"],
                sandbox.env["MOIZVONKI_USER"],
                sandbox.env["MOIZVONKI_API_KEY"],
                str(Path(scratch) / "sync.db"),
                str(args.days),
            ]
            done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
            if done.returncode:
                raise SystemExit(done.stderr[-3000:])
            sync = json.loads(done.stdout.strip().splitlines()[-1])
            size = (Path(scratch) / "sync.db").stat().st_size / 2**20

    print(f"sandbox: {sandbox.info['calls']} calls over {args.days} days")
    print(
        f"server idle (tariti-mcp serve, after tools/list)  {idle:7.1f} MB  (peak {idle_peak:.1f})"
    )
    print(
        f"sync process: {sync['stored']} calls stored in {sync['requests']} requests, "
        f"{sync['seconds']:.1f} s, database {size:.0f} MB"
    )
    print(f"  resident before the sync                        {sync['before']:7.1f} MB")
    print(f"  peak (VmHWM)                                    {sync['peak']:7.1f} MB")
    print(f"  resident after the sync                         {sync['after']:7.1f} MB")
    over_idle = sync["peak"] - idle
    print(
        f"  peak above the server's idle memory             {over_idle:7.1f} MB (limit {LIMIT_MB})"
    )
    print(
        f"  peak above its own start                        {sync['peak'] - sync['before']:7.1f} MB"
    )
    line = ", ".join(
        f"{done / total:.0%} {rss:.0f}"
        for done, total, rss in sync["samples"][:: max(1, len(sync["samples"]) // 8)]
    )
    print(f"  resident as the days go by (share done MB)      {line}")
    if over_idle > LIMIT_MB:
        raise SystemExit(f"the sync's peak is {over_idle:.0f} MB above idle, over {LIMIT_MB} MB")


if __name__ == "__main__":
    main()
