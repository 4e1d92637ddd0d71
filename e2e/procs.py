"""Background processes with a pid file and a log file, stopped by process group.

Each process starts in its own session (so its own process group): a signal to
the group also reaches anything it spawned, and a Ctrl-C in the terminal that
started it does not. The pid file lets another Python process (`e2e.dev down`,
or the next test session cleaning up after a killed one) find and stop it; the
command line is checked against a marker before signalling, so a pid recycled
by an unrelated process is never killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self


@dataclass
class ManagedProcess:
    """One background process: where its pid and log live, and how to recognise it.

    `marker` is a string that occurs in the process's command line (for the
    control plane: the absolute state directory, which every component's
    arguments contain).
    """

    name: str
    pid_file: Path
    log_file: Path
    marker: str
    _popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def start(
        self, argv: Sequence[str | Path], env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        """Start the process in the background, appending its stdout and stderr to the log file."""
        if self.pid() is not None:
            raise RuntimeError(f"{self.name} is already running (pid file {self.pid_file})")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self._popen = subprocess.Popen(
                [str(a) for a in argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{self._popen.pid}\n")

    def pid(self) -> int | None:
        """The pid of the running process, or None if it is not running (or the pid is not ours)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _is_ours(pid, self.marker) else None

    def is_running(self) -> bool:
        return self.pid() is not None

    def exit_code(self) -> int | None:
        """The exit status if this object started the process and it has ended, else None."""
        return self._popen.poll() if self._popen is not None else None

    def log_tail(self, max_bytes: int = 4000) -> str:
        """The end of the log, for error messages."""
        try:
            with self.log_file.open("rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - max_bytes))
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the process group: SIGTERM, then SIGKILL after `timeout` seconds."""
        stop_all([self], timeout)

    def kill(self, timeout: float = 5.0) -> None:
        """SIGKILL the process group now (no graceful shutdown: a crash, an OOM kill), then reap it."""
        pid = self.pid()
        if pid is None:
            return
        _signal_group(pid, signal.SIGKILL)
        _wait_gone(pid, timeout)
        _reap(self)


class StartError(RuntimeError):
    """A background service did not come up; the message ends with the log of the process that failed."""


class BackgroundService:
    """Processes that together make one service, with all their files under `state_dir`.

    A subclass implements `_launch(deadline)`, starting each process with `_run`. `start()` tries
    a second time when a port picked free was taken before the process bound it (another test
    session starting at the same moment), `stop()` ends them all (the last started first), and
    `with service:` does both.
    """

    def __init__(self, state_dir: Path, names: Sequence[str]) -> None:
        self.state_dir = state_dir.resolve()
        self.processes = {
            name: ManagedProcess(
                name=name,
                pid_file=self.state_dir / f"{name}.pid",
                log_file=self.state_dir / f"{name}.log",
                # every command line names a file in the state directory
                marker=f"{self.state_dir}{os.sep}",
            )
            for name in names
        }

    def start(self, timeout: float = 90.0) -> Self:
        """Start everything and wait until it serves; returns self.

        On any failure what was started is stopped again (`with` calls no `stop()` when the
        start fails); a port taken meanwhile gets one more try with new ports.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for attempt in (1, 2):
            try:
                self._launch(time.monotonic() + timeout)
                return self
            except BaseException as error:
                self.stop()
                if attempt == 2 or "address already in use" not in str(error):
                    raise
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the processes (SIGTERM, SIGKILL after `timeout`)."""
        stop_all(reversed(list(self.processes.values())), timeout)

    def log_file(self, name: str) -> Path:
        return self.processes[name].log_file

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def _launch(self, deadline: float) -> None:
        raise NotImplementedError

    def _run(
        self,
        name: str,
        argv: Sequence[str | Path],
        ready: Callable[[], bool],
        deadline: float,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Start one process and poll `ready` until it holds; fail at once, with its log, if it exits."""
        process = self.processes[name]
        process.start(argv, env={**os.environ, **(env or {})}, cwd=self.state_dir)
        while not ready():
            code = process.exit_code()
            if code is not None:
                raise StartError(
                    f"{name} exited with status {code}; end of {process.log_file}:\n{process.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise StartError(
                    f"{name} not ready in time; end of {process.log_file}:\n{process.log_tail()}"
                )
            time.sleep(0.2)


def stop_all(processes: Iterable[ManagedProcess], timeout: float = 10.0) -> None:
    """Stop several processes at once (they shut down in parallel), then remove their pid files."""
    running: dict[int, ManagedProcess] = {}
    for proc in processes:
        pid = proc.pid()
        if pid is not None:
            running[pid] = proc
            _signal_group(pid, signal.SIGTERM)
        else:
            proc.pid_file.unlink(missing_ok=True)
    deadline = time.monotonic() + timeout
    while running and time.monotonic() < deadline:
        for pid in [p for p in running if not pid_alive(p)]:
            _reap(running.pop(pid))
        time.sleep(0.05)
    for pid, proc in running.items():
        _signal_group(pid, signal.SIGKILL)
        _wait_gone(pid, 5.0)
        _reap(proc)


def _reap(proc: ManagedProcess) -> None:
    # A child of this Python process stays a zombie until waited for.
    if proc._popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc._popen.wait(timeout=1.0)
        # stopped on purpose: its exit is no failure to report. Keeping it made a cluster's second
        # start (after a port was taken) fail at once: "kube-apiserver exited with status 0 while
        # waiting for etcd", the first start's API server, before the new one was launched.
        proc._popen = None
    proc.pid_file.unlink(missing_ok=True)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # start_new_session=True made the process its group's leader: pgid == pid.
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a zombie has already exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state letter follows the parenthesised command name, which may itself contain spaces.
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _is_ours(pid: int, marker: str) -> bool:
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return marker in cmdline
