"""The harness's process primitives with real processes: ports that are never handed out twice,
a component that lost its port starting again on a new one, and a ledger that ends whole process
groups but never a process that merely reuses a recorded pid.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from sovereign_dev.cluster import Component
from sovereign_dev.processes import (
    ProcessLedger, Recorded, free_port, live_groups, port_taken, process_alive, recorded,
    reported_port)

# A tiny server: binds the port given as its argument (or 0), says which port it got, serves.
SERVER = """
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
print("listening on 127.0.0.1:%d" % s.getsockname()[1], flush=True)
time.sleep(600)
"""


def _wait_for(predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"not true within {timeout}s: {predicate}")


def _ephemeral_floor() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range():
    ports = [free_port() for _ in range(300)]

    assert len(set(ports)) == len(ports)
    assert all(20000 <= port < _ephemeral_floor() for port in ports)
    for port in ports[:20]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_component_whose_port_was_taken_starts_again_on_a_new_one(tmp_path: Path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    first = taken.getsockname()[1]
    ports = [first]

    def argv() -> list[str]:
        return [sys.executable, "-c", SERVER, str(ports[-1])]

    def repick() -> list[str]:
        ports.append(free_port())
        return argv()

    component = Component("server", argv(), tmp_path / "server.log", repick=repick)
    component.start()
    try:
        _wait_for(lambda: not component.running())
        assert port_taken(component.output())

        assert component.restart_if_port_taken()

        line = rf"listening on 127\.0\.0\.1:(\d+)"
        got = _wait_for(lambda: reported_port(component.output(), line))
        assert got == ports[-1] != first
        assert component.running()
        # The tail shows the latest start only, not the failed one before it.
        assert "already in use" not in component.tail()
    finally:
        component.stop()
        taken.close()


def test_a_component_that_failed_for_another_reason_is_not_restarted(tmp_path: Path):
    component = Component("broken", [sys.executable, "-c", "raise SystemExit('no config file')"],
                          tmp_path / "broken.log", repick=lambda: ["true"])
    component.start()
    _wait_for(lambda: not component.running())

    assert not component.restart_if_port_taken()
    assert "no config file" in component.tail()


def test_the_ledger_ends_whole_groups_of_a_run_it_did_not_start(tmp_path: Path):
    ledger = ProcessLedger(tmp_path / "processes.jsonl")
    # A leader that starts a child of its own, then is killed without its child (as SIGKILL
    # of `dev up` leaves things): the group's survivor must still be found and ended.
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 600 & echo $! ; wait"], stdout=subprocess.PIPE, text=True,
        start_new_session=True)
    child = int(leader.stdout.readline())
    ledger.record(recorded(name="leader", pid=leader.pid, log=tmp_path / "leader.log"))
    os.kill(leader.pid, signal.SIGKILL)
    leader.wait()

    assert [entry.name for entry in ledger.alive()] == ["leader"]
    ended = ProcessLedger(ledger.path).terminate(grace=5)

    assert [entry.name for entry in ended] == ["leader"]
    assert leader.pid not in live_groups()
    assert not process_alive(child)
    assert ledger.alive() == []


def test_the_ledger_leaves_a_process_that_reuses_a_recorded_pid_alone(tmp_path: Path):
    stranger = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        ledger = ProcessLedger(tmp_path / "processes.jsonl")
        # The same pid, recorded with another start time: an earlier process that had it.
        real = recorded(name="x", pid=stranger.pid, log="x.log")
        ledger.record(Recorded(name="old", pid=stranger.pid, started=real.started - 1, log="x.log"))

        assert ledger.alive() == []
        assert ledger.terminate(grace=1) == []
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_a_ledger_line_cut_short_by_a_crash_is_skipped(tmp_path: Path):
    ledger = ProcessLedger(tmp_path / "processes.jsonl")
    ledger.record(recorded(name="sh", pid=os.getpid(), log="-"))
    with open(ledger.path, "a") as out:
        out.write('{"name": "cut", "pid": 12')

    assert [entry.name for entry in ledger.entries()] == ["sh"]
