"""Process plumbing for the benchmark: pinned spawn, readiness, bounded stop, CPU accounting.

Every server runs in its own process group so that stopping it also stops whatever it
forked (nginx workers, gateway workers), and every wait has a timeout so one stuck server
cannot hang the run.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
LIVE: list[Server] = []  # started and not yet stopped, for stop_all() on the way out


class BenchError(RuntimeError):
    """A benchmark step failed in a way the user must see (server did not start, ...)."""


def free_port() -> int:
    """A currently free loopback port (the usual bind-to-0 trick; tiny race accepted)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def can_pin() -> bool:
    """Pinning needs two cores; on one core everything shares it anyway."""
    return (os.cpu_count() or 1) >= 2 and hasattr(os, "sched_setaffinity")


def pinned(cmd: list[str], core: int | None) -> tuple[list[str], object]:
    """(argv, preexec_fn) running cmd on one core: taskset when present, else sched_setaffinity."""
    if core is None or not can_pin():
        return cmd, None
    if shutil.which("taskset"):
        return ["taskset", "-c", str(core), *cmd], None
    return cmd, lambda: os.sched_setaffinity(0, {core})


@dataclass
class Server:
    """A spawned server process; stderr goes to a file so a full pipe can never block it."""

    name: str
    popen: subprocess.Popen
    port: int
    stderr_path: Path
    _stderr_file: object = field(repr=False, default=None)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stderr_tail(self, limit: int = 4000) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-limit:]

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL it after timeout; never waits unbounded."""
        pid = self.popen.pid
        if self.popen.poll() is None:
            _signal_group(pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(pid, signal.SIGKILL)
                try:
                    self.popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass  # unkillable (D state): report nothing, do not hang the run
        _signal_group(pid, signal.SIGKILL)  # stragglers the leader left behind
        if self in LIVE:
            LIVE.remove(self)
        if self._stderr_file is not None:
            self._stderr_file.close()
            self._stderr_file = None


def stop_all() -> None:
    """Stop every server still running (the last line of defence on errors and Ctrl-C)."""
    for server in list(LIVE):
        server.stop()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def start_server(name: str, cmd: list[str], port: int, *, core: int | None, env: dict | None = None,
                 cwd: str | None = None, workdir: str | None = None, ready_timeout: float = 15.0) -> Server:
    """Spawn cmd pinned to core and wait until port accepts connections.

    Raises BenchError with the server's stderr when it exits early or never listens.
    """
    argv, preexec = pinned(cmd, core)
    stderr_path = Path(workdir or tempfile.gettempdir()) / f"{name}-{port}.stderr"
    err = open(stderr_path, "wb")
    popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=env, cwd=cwd,
                             start_new_session=True, preexec_fn=preexec)
    server = Server(name, popen, port, stderr_path, err)
    LIVE.append(server)
    try:
        wait_listening(server, ready_timeout)
    except BaseException:
        server.stop()
        raise
    return server


def wait_listening(server: Server, timeout: float) -> None:
    """Poll-connect to the server's port until it answers, it dies, or timeout passes."""
    deadline = time.monotonic() + timeout
    while True:
        if server.popen.poll() is not None:
            raise BenchError(f"{server.name} exited with code {server.popen.returncode} before listening on "
                             f"127.0.0.1:{server.port}\n--- {server.name} stderr ---\n{server.stderr_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=0.5):
                pass
        except OSError:
            pass
        else:
            if server.popen.poll() is None:  # not a stranger that grabbed the port first
                return
            continue
        if time.monotonic() > deadline:
            raise BenchError(f"{server.name} did not listen on 127.0.0.1:{server.port} within {timeout:.0f}s"
                             f"\n--- {server.name} stderr ---\n{server.stderr_tail()}")
        time.sleep(0.05)


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from field 3 (state) on; the comm field may contain spaces."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def descendants(root: int) -> list[int]:
    """root and every live process below it (nginx master -> workers, gateway -> workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def tree_cpu_seconds(root: int) -> float:
    """utime+stime+cutime+cstime (stat fields 14-17) summed over root's live process tree.

    A child that exits in the window moves from its own counters into its parent's cutime,
    so the sum stays continuous as long as the parent reaps it.
    """
    ticks = 0
    for pid in descendants(root):
        fields = _stat_fields(pid)
        if fields:
            ticks += sum(int(v) for v in fields[11:15])
    return ticks / CLK_TCK


def core_times() -> dict[int, dict[str, float]]:
    """Per-core seconds from /proc/stat: busy (user+nice+system+irq+softirq), softirq, steal.

    Loopback TCP work done in softirq context is not charged to any process when the
    kernel accounts IRQ time separately, so per-core figures complete the per-process ones.
    """
    cores = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *vals = line.split()
            user, nice, system, idle, iowait, irq, softirq, steal = (int(v) / CLK_TCK for v in vals[:8])
            cores[int(name[3:])] = {"busy": user + nice + system + irq + softirq, "softirq": softirq + irq,
                                    "steal": steal}
    return cores
