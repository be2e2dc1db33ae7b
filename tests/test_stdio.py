"""Over real stdio, `tariti-mcp serve --sandbox` writes nothing to stdout but JSON-RPC."""

import json
import os
import subprocess
import sys


def exchange(process, message):
    process.stdin.write(json.dumps(message) + "\n")
    process.stdin.flush()


def read_message(process):
    line = process.stdout.readline()
    assert line, "the server closed stdout early; stderr:\n" + process.stderr.read()[-2000:]
    message = json.loads(line)  # any non-protocol byte fails here
    assert message.get("jsonrpc") == "2.0", line
    return message


def read_response(process, request_id):
    while True:
        message = read_message(process)
        if message.get("id") == request_id:
            return message


def sandbox_server(tmp_path, calls: int, preexec_fn=None, **env_extra: str) -> subprocess.Popen:
    """``tariti-mcp serve --sandbox`` over pipes, with none of this machine's settings."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AMOCRM_", "MOIZVONKI_", "TARITI_"))
    }
    env.update({"PYTHONUNBUFFERED": "1", **env_extra})
    return subprocess.Popen(
        [sys.executable, "-m", "tariti_mcp", "serve", "--sandbox", "--calls", str(calls)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=env,
        preexec_fn=preexec_fn,
    )


def initialize(process) -> dict:
    exchange(
        process,
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "stdio-test", "version": "1"},
            },
        },
    )
    return read_response(process, 1)


def test_stdout_is_only_protocol(tmp_path):
    process = sandbox_server(tmp_path, 800, TARITI_LOG_LEVEL="DEBUG")
    try:
        assert initialize(process)["result"]["serverInfo"]["name"] == "tariti-mcp"
        exchange(process, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        exchange(process, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        names = sorted(t["name"] for t in read_response(process, 2)["result"]["tools"])
        assert names == [
            "call_amocrm_api",
            "call_moizvonki_api",
            "forward_lead_to_amocrm",
            "get_moizvonki_analytics",
        ]
        requests = [
            ("call_amocrm_api", {"path": "/api/v4/leads", "query": {"limit": 2}}),
            ("call_amocrm_api", {"path": "/api/v4/contacts", "query": {"query": "zz-nobody"}}),
            ("get_moizvonki_analytics", {}),
            (
                "call_moizvonki_api",
                {"action": "calls.list", "params": {"from_id": 0, "max_results": 5}},
            ),
            ("call_amocrm_api", {"path": "https://evil.example/api/v4/leads"}),
        ]
        for number, (name, arguments) in enumerate(requests, start=3):
            exchange(
                process,
                {
                    "jsonrpc": "2.0",
                    "id": number,
                    "method": "tools/call",
                    "params": {"name": name, "arguments": arguments},
                },
            )
            result = read_response(process, number)["result"]
            assert result["isError"] is (name == "call_amocrm_api" and number == 7), result
        process.stdin.close()
        remaining = process.stdout.read()
        process.wait(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
        process.stdout.close()
        process.stderr.close()
    for line in remaining.splitlines():
        assert json.loads(line)["jsonrpc"] == "2.0"
    assert process.returncode == 0


def test_sigterm_cleans_up_the_sandbox_database_like_ctrl_c(tmp_path):
    """A newcomer's find: Ctrl-C removed the sandbox's scratch database, SIGTERM left it."""
    import signal

    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    process = sandbox_server(tmp_path, 200, TMPDIR=str(scratch_root))
    try:
        initialize(process)
        created = [path.name for path in scratch_root.iterdir()]
        assert any(name.startswith("tariti-sandbox-") for name in created), created
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
    assert code == 0
    assert list(scratch_root.iterdir()) == []


def test_sigterm_while_starting_and_twice_while_stopping_exits_cleanly(tmp_path):
    """An adversary's finds: SIGTERM while the emulators were built printed a traceback and
    exited 130; a second SIGTERM, in a server started with Ctrl-C ignored (`cmd &` in a
    script), killed it before its cleanup."""
    import signal
    import time

    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    starting = sandbox_server(tmp_path, 3000, TMPDIR=str(scratch_root))
    time.sleep(1.0)
    starting.send_signal(signal.SIGTERM)
    assert starting.wait(timeout=20) == 0
    assert "Traceback" not in starting.communicate()[1]

    ignoring = sandbox_server(
        tmp_path,
        200,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        TMPDIR=str(scratch_root),
    )
    try:
        initialize(ignoring)
        ignoring.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        ignoring.send_signal(signal.SIGTERM)
        code = ignoring.wait(timeout=20)
    finally:
        if ignoring.poll() is None:
            ignoring.kill()
        err = ignoring.communicate()[1]
    assert code == 0 and "Traceback" not in err
    assert list(scratch_root.iterdir()) == []


def test_stdio_with_stdin_closed_is_one_clear_line(tmp_path):
    """An adversary's find: a closed stdin crashed inside the SDK with an AttributeError."""
    run = subprocess.run(
        [sys.executable, "-m", "tariti_mcp", "serve", "--sandbox", "--calls", "50"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        preexec_fn=lambda: os.close(0),
    )
    assert run.returncode == 2
    assert run.stderr.strip().endswith(
        "serving over stdio needs stdin and stdout open; an MCP host starts the server with "
        "both as pipes (or use --transport http)"
    )
