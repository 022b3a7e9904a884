"""Child processes of the local cloud: loopback ports for them, and a ledger of what was started.

Two problems every harness component shares, solved once here:

- **Ports.** A component that can bind port 0 itself should (the node agents do, and log the port
  they got). Those that cannot (etcd, the control plane, MinIO, the operator's webhook server) get
  one from ``free_port()``: a port below the kernel's ephemeral range, so it never collides with the
  source port of an outgoing connection, never handed out twice by this process, and free when
  picked. Another process can still take it before the component binds it; ``port_taken()`` reads
  that from the component's log so the caller can start it again on a new port.
- **Leftovers.** ``ProcessLedger`` appends one line per started process (name, pid, the kernel's
  start time of that pid, log) to a file, as soon as the process exists. Whatever happens to the
  process that started them (an exception, Ctrl-C, SIGTERM, SIGKILL), the ledger lets the same or a
  later run end every process group it recorded, without ever signalling a process that merely
  reuses a recorded pid.

Used by ``cluster`` (control-plane components), ``minio`` and ``devenv`` (``sovereign dev up`` and
``down``), and by tests that start agents or webhook servers on loopback.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

# Ports of fixed-port services of the real node (kubelet 10250, kube-proxy 10249/10256, CoreDNS
# 9153, containerd's 1338x range) and most well-known daemons lie below this.
_PORT_FLOOR = 20000
_PORT_TRIES = 500
_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()
_PORT_TAKEN = re.compile(r"address already in use", re.IGNORECASE)


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int, host: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(*, host: str = "127.0.0.1") -> int:
    """A port on ``host`` that is free now and that this process has not handed out before.

    Picked at random below the ephemeral range when that range leaves room, else by the kernel
    (port 0). Still only probably free by the time a child binds it: pair it with ``port_taken``.
    """
    floor = _ephemeral_floor()
    with _handed_out_lock:
        for _ in range(_PORT_TRIES):
            if floor - _PORT_FLOOR >= 1000:
                port = random.randrange(_PORT_FLOOR, floor)
            else:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                    probe.bind((host, 0))
                    port = probe.getsockname()[1]
            if port not in _handed_out and _bindable(port, host):
                _handed_out.add(port)
                return port
    raise OSError(f"no free port on {host} after {_PORT_TRIES} tries")


def port_taken(log_text: str) -> bool:
    """Whether a process's output says it could not bind its port (Go's and Python's wording)."""
    return bool(_PORT_TAKEN.search(log_text))


def reported_port(log_text: str, pattern: str) -> int | None:
    """The port a process that bound port 0 logged, read with ``pattern`` (one group: the port)."""
    found = re.findall(pattern, log_text)
    return int(found[-1]) if found else None


# -- processes --------------------------------------------------------------------------------


def start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks after boot); None when there is no such pid.

    A pid and its start time name one process for good: a reused pid has a later start time.
    """
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[19])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None


def process_alive(pid: int) -> bool:
    """Whether ``pid`` still runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def live_groups() -> set[int]:
    """The process groups that still have a running member (zombies do not count), in one pass."""
    groups: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
            continue
        if fields[0] != "Z":
            groups.add(int(fields[2]))
    return groups


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class OwnedServer:
    """Base of a server process one harness object owns (MinIO, llama-server): ``start()`` sets
    ``_process`` (started with ``start_new_session``, registering ``stop`` with ``atexit``);
    ``stop()`` and the ``with`` statement end its whole process group."""

    _process: subprocess.Popen | None = None
    #: Seconds between SIGTERM and SIGKILL.
    stop_grace: float = 10.0

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """SIGTERM the server's process group, SIGKILL it after ``stop_grace`` seconds; idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        atexit.unregister(self.stop)
        signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=self.stop_grace)
        except subprocess.TimeoutExpired:
            signal_group(process.pid, signal.SIGKILL)
            process.wait()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


@dataclass(frozen=True)
class Recorded:
    """One started process: it leads its own process group (``start_new_session``)."""

    name: str
    pid: int
    started: int | None
    log: str

    def alive(self, live: set[int]) -> bool:
        """Whether group ``pid`` still runs (``live``: from ``live_groups()``) and is this one.

        The leader with its recorded start time is ours. With the leader gone, a group with its
        number can only be the old one's survivors: Linux keeps a pid number allocated while any
        process still has it as its process group. A leader with another start time is a new
        process that reuses the number, and is left alone.
        """
        if self.pid not in live:
            return False
        now = start_time(self.pid)
        return now is None or now == self.started


class ProcessLedger:
    """An append-only file of the processes one run started; see the module docstring."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def record(self, entry: Recorded) -> None:
        line = json.dumps(asdict(entry)) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # One write per line, so a run killed at any moment leaves whole lines behind.
            with open(self.path, "a") as out:
                out.write(line)

    def entries(self) -> list[Recorded]:
        if not self.path.exists():
            return []
        result = []
        for line in self.path.read_text().splitlines():
            try:
                result.append(Recorded(**json.loads(line)))
            except (ValueError, TypeError):
                continue  # a line cut short by a crash names no process we could check
        return result

    def alive(self) -> list[Recorded]:
        live = live_groups()
        return [entry for entry in self.entries() if entry.alive(live)]

    def terminate(self, *, grace: float = 10.0) -> list[Recorded]:
        """End every recorded group still running (see ``terminate``); returns those entries."""
        return terminate(self.entries(), grace=grace)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def recorded(*, name: str, pid: int, log: Path | str) -> Recorded:
    """The entry for a process just started (its start time read now, while it surely runs)."""
    return Recorded(name=name, pid=pid, started=start_time(pid), log=str(log))


def terminate(entries: Iterable[Recorded], *, grace: float = 10.0) -> list[Recorded]:
    """End the groups of ``entries`` that still run: SIGTERM, SIGKILL after ``grace`` seconds.

    All groups are signalled at once, so a hundred agents take one grace period, not a hundred;
    returns the entries that were still running.
    """
    live = live_groups()
    running = [entry for entry in entries if entry.alive(live)]
    _terminate_groups([entry.pid for entry in running], grace=grace)
    return running


def _terminate_groups(pgids: list[int], *, grace: float) -> None:
    pending = list(dict.fromkeys(pgids))
    for pgid in pending:
        signal_group(pgid, signal.SIGTERM)
    for sig, wait in ((signal.SIGKILL, grace), (None, 10.0)):
        deadline = time.monotonic() + wait
        while pending and time.monotonic() < deadline:
            time.sleep(0.1)
            live = live_groups()
            pending = [pgid for pgid in pending if pgid in live]
        if sig is not None:
            for pgid in pending:
                signal_group(pgid, sig)
