"""``sovereign evaluate`` waits for an endpoint that is not listening yet, and gives up in time.

A candidate's Service can get its endpoints a moment after the evaluation Job starts; the Job
must then wait, not fail a good model as unreachable. Real sockets on loopback, no fakes.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time

import pytest

from sovereign.services.evaluate import EndpointUnreachable, await_endpoint


class _Models(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.send_response(200 if self.path == "/v1/models" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_endpoint_that_starts_listening_late_is_waited_for() -> None:
    port = _free_port()
    servers: list[http.server.HTTPServer] = []

    def start_later() -> None:
        time.sleep(1.5)
        server = http.server.HTTPServer(("127.0.0.1", port), _Models)
        servers.append(server)
        server.serve_forever()

    threading.Thread(target=start_later, daemon=True).start()
    began = time.monotonic()
    try:
        await_endpoint(base_url=f"http://127.0.0.1:{port}/v1", within=20)
        assert time.monotonic() - began >= 1.4
    finally:
        for server in servers:
            server.shutdown()


def test_an_endpoint_nobody_opens_is_unreachable_after_the_wait() -> None:
    port = _free_port()
    began = time.monotonic()

    with pytest.raises(EndpointUnreachable, match=rf"cannot reach http://127.0.0.1:{port}/v1 .* within 1s"):
        await_endpoint(base_url=f"http://127.0.0.1:{port}/v1", within=1)
    assert time.monotonic() - began < 10
