"""Start `python -m MODULE ARGS` or `python SCRIPT.py ARGS` as a child of tests/warm_server.py, which has torch and
gptforge imported: the same process a fresh interpreter would be, about 3 s of CPU sooner.

`WarmStarter.popen` and `.run` take the argument lists and the keywords tests give `subprocess.Popen` and
`subprocess.run` (stdout/stderr as files, PIPE, DEVNULL or STDOUT; env; cwd; text; timeout;
start_new_session) and return objects that behave alike (pid, poll, wait, send_signal, kill, communicate,
returncode). Only `[sys.executable, "-m", MODULE, ...]` and `[sys.executable, SCRIPT.py, ...]` are served.
`relay_command` is a command line torchrun can start in place of a training process (tests/warm_relay.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

SERVER = Path(__file__).with_name("warm_server.py")
RELAY = Path(__file__).with_name("warm_relay.py")


def send_request(socket_path: str, program: list[str], fds: list[int], *, env: dict[str, str], cwd: str,
                 new_session: bool = False, unbuffered: bool = False) -> socket.socket:
    """Ask the warm server for `python PROGRAM` on `fds` (stdin, stdout, stderr); the connection returned
    then yields the child's PID, and later its exit status."""
    if program[0] == "-m":
        module, script, args = program[1], None, program[2:]
    elif program[0].endswith(".py"):
        module, script, args = None, program[0], program[1:]
    else:
        raise ValueError(f"the warm server runs `python -m MODULE ...` or `python SCRIPT.py ...`, not {program[:2]}")
    request = {"module": module, "script": script, "args": [str(arg) for arg in args], "env": env, "cwd": cwd,
               "new_session": new_session, "unbuffered": unbuffered}
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    connection.connect(socket_path)
    socket.send_fds(connection, [json.dumps(request).encode()], fds)
    return connection


class WarmProcess:
    """A child of the warm server, seen through its connection: the PID first, then the exit status."""

    def __init__(self, connection: socket.socket, args: list[str], captured: dict[str, IO[bytes]],
                 text: bool) -> None:
        self.args = args
        self.connection = connection
        self.pid = int(connection.recv(64))
        self.returncode: int | None = None
        self.captured = captured
        self.text = text

    def poll(self) -> int | None:
        return self._status(block=False)

    def wait(self, timeout: float | None = None) -> int:
        status = self._status(block=True, timeout=timeout)
        if status is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return status

    def _status(self, block: bool, timeout: float | None = None) -> int | None:
        if self.returncode is None:
            self.connection.settimeout(timeout if block else 0)
            try:
                message = self.connection.recv(64)
            except (BlockingIOError, TimeoutError):
                return None
            if not message:
                raise RuntimeError(f"the warm server went away while {self.args} ran")
            self.returncode = int(message)
            self.connection.close()
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[Any, Any]:
        self.wait(timeout)
        outputs = []
        for name in ("stdout", "stderr"):
            file = self.captured.get(name)
            if file is None:
                outputs.append(None)
                continue
            file.seek(0)
            data = file.read()
            file.close()
            outputs.append(data.decode("utf-8", errors="replace") if self.text else data)
        return outputs[0], outputs[1]


class WarmStarter:
    """One warm server per test process, started on first use and stopped by `close`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.server: subprocess.Popen | None = None

    @property
    def socket_path(self) -> str:
        return str(self.folder / "warm.sock")

    def start(self) -> None:
        env = {name: value for name, value in os.environ.items() if name != "OMP_NUM_THREADS"}
        Path(self.socket_path).unlink(missing_ok=True)  # a server stopped by kill -9 leaves its socket
        log = (self.folder / "server.log").open("wb")
        self.server = subprocess.Popen([sys.executable, str(SERVER), self.socket_path], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=log, env=env, cwd=self.folder)
        log.close()
        if self.server.stdout.readline() != b"ready\n":  # or the end of its output: it failed to start
            raise RuntimeError(f"the warm server did not start: {(self.folder / 'server.log').read_text()}")

    def close(self) -> None:
        if self.server is not None:
            self.server.stdin.close()
            self.server.wait(timeout=30)
            self.server.stdout.close()

    def popen(self, args: list[str], *, stdin: Any = None, stdout: Any = None, stderr: Any = None,
              env: dict[str, str] | None = None, cwd: str | Path | None = None, text: bool = False,
              start_new_session: bool = False) -> WarmProcess:
        if args[0] != sys.executable:
            raise ValueError(f"the warm server runs this Python, not {args[0]}")
        if self.server is None:
            self.start()
        captured: dict[str, IO[bytes]] = {}
        opened: list[int] = []

        def descriptor(name: str, given: Any, default: int) -> int:
            if given is None:
                return default
            if given == subprocess.DEVNULL:
                opened.append(os.open(os.devnull, os.O_RDWR))
                return opened[-1]
            if given == subprocess.PIPE:  # a file, read by communicate(): nothing blocks on a full pipe
                captured[name] = tempfile.TemporaryFile(dir=self.folder)  # noqa: SIM115 (closed by communicate)
                return captured[name].fileno()
            return given if isinstance(given, int) else given.fileno()

        fds = [descriptor("stdin", stdin, 0), descriptor("stdout", stdout, 1)]
        fds.append(fds[1] if stderr == subprocess.STDOUT else descriptor("stderr", stderr, 2))
        try:
            connection = send_request(self.socket_path, args[1:], fds, env=dict(os.environ if env is None else env),
                                      cwd=str(cwd or os.getcwd()), new_session=start_new_session)
            return WarmProcess(connection, args, captured, text)
        finally:
            for fd in opened:
                os.close(fd)

    def relay_command(self, program: list[str]) -> list[str]:
        """What torchrun starts in place of `python PROGRAM`: tests/warm_relay.py, which has this server run it."""
        if self.server is None:
            self.start()
        return [str(RELAY), self.socket_path, *program]

    def run(self, args: list[str], *, capture_output: bool = False, text: bool = False,
            timeout: float | None = None, **kwargs: Any) -> subprocess.CompletedProcess:
        if capture_output:
            kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        process = self.popen(args, text=text, **kwargs)
        try:
            stdout, stderr = process.communicate(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)
