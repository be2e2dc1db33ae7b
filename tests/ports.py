"""Loopback ports for tests that need nothing to answer."""

import socket


def closed_port() -> int:
    """A loopback port nothing listens on (free a moment ago; the kernel hands ports out in turn,
    so it stays free for the short while a test uses it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
