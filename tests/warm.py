"""Start `python -m MODULE ARGS` or `python SCRIPT.py ARGS` as a child of tests/warm_server.py, which has torch and
gptforge imported: the same process a fresh interpreter would be, about 3 s of CPU sooner.

`WarmStarter.popen` and `.run` take the argument lists and the keywords tests give `subprocess.Popen` and
`subprocess.run` (stdin as a file, descriptor or DEVNULL; stdout/stderr as files, descriptors, PIPE, DEVNULL or
STDOUT; env; cwd; text; timeout; start_new_session) and return objects that behave alike (pid, poll, wait,
send_signal, kill, communicate, returncode), but for one thing: a WarmProcess dropped while its child runs
takes the child with it. Only `[sys.executable, "-m", MODULE, ...]` and `[sys.executable, SCRIPT.py, ...]` are
served, and only with the interpreter settings the servers started with (STARTUP_VARIABLES).

Two servers run, each with a hash seed of its own as fresh interpreters have: where processes hand state on
(a checkpoint written by one and resumed by the next), tests alternate between them. `relay_command` is a
command line torchrun can start in place of a training process (tests/warm_relay.py): rank R's relay asks
server (R + shift) % 2, so ranks differ, and a launch with another shift reads what they wrote.
"""

from __future__ import annotations

import contextlib
import json
import locale
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

SERVER = Path(__file__).with_name("warm_server.py")
RELAY = Path(__file__).with_name("warm_relay.py")
SERVERS = 2
# read by the interpreter at start-up, so a child keeps its server's: a request may not change them
STARTUP_VARIABLES = ("PYTHONHASHSEED", "PYTHONPATH", "PYTHONWARNINGS", "PYTHONIOENCODING", "PYTHONUTF8",
                     "PYTHONSAFEPATH", "PYTHONDEVMODE", "LC_ALL", "LC_CTYPE", "LANG")


def socket_path(folder: str | Path, server: int) -> str:
    return str(Path(folder, f"warm-{server}.sock"))


def send_request(socket_file: str, program: list[str], fds: list[int], *, env: dict[str, str], cwd: str,
                 new_session: bool = False, unbuffered: bool = False) -> socket.socket:
    """Ask the warm server for `python PROGRAM` on `fds` (stdin, stdout, stderr); the connection returned
    then yields the child (`receive_child`), and later its exit status (`receive_status`)."""
    if program[0] == "-m":
        module, script, args = program[1], None, program[2:]
    elif program[0].endswith(".py"):
        module, script, args = None, program[0], program[1:]
    else:
        raise ValueError(f"the warm server runs `python -m MODULE ...` or `python SCRIPT.py ...`, not {program[:2]}")
    request = {"module": module, "script": script, "args": [str(arg) for arg in args], "env": env, "cwd": cwd,
               "new_session": new_session, "unbuffered": unbuffered}
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    connection.connect(socket_file)
    socket.send_fds(connection, [json.dumps(request).encode()], fds)
    return connection


def receive_child(connection: socket.socket) -> tuple[int, int]:
    """The child's PID and a pidfd for it."""
    message, fds, _, _ = socket.recv_fds(connection, 64, 1)
    if not message:
        raise RuntimeError("the warm server went away before starting the process")
    os.set_inheritable(fds[0], False)  # received descriptors are inheritable; this one is ours alone
    return int(message), fds[0]


def receive_status(connection: socket.socket) -> int:
    message = connection.recv(64)
    if not message:
        raise RuntimeError("the warm server went away while the process ran")
    return int(message)


def signal_child(pidfd: int, signum: int) -> None:
    """Send `signum` to the child behind `pidfd`; one that has ended already is left alone, as Popen does."""
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(pidfd, signum)


class WarmProcess:
    """A child of the warm server, seen through its connection: the PID first, then the exit status."""

    def __init__(self, connection: socket.socket, args: list[str], pipes: dict[str, IO[bytes]], text: bool) -> None:
        self.args = args
        self.connection = connection
        self.pid, self.pidfd = receive_child(connection)
        self.returncode: int | None = None
        self.stdout, self.stderr = pipes.get("stdout"), pipes.get("stderr")
        self.text = text

    def poll(self) -> int | None:
        return self._status(timeout=0)

    def wait(self, timeout: float | None = None) -> int:
        status = self._status(timeout)
        if status is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return status

    def _status(self, timeout: float | None) -> int | None:
        if self.returncode is None:
            self.connection.settimeout(timeout)
            try:
                self.returncode = receive_status(self.connection)
            except (BlockingIOError, TimeoutError):
                return None
            self.connection.close()
            os.close(self.pidfd)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            signal_child(self.pidfd, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[Any, Any]:
        """Read the pipes to their end (the child's and any process it left holding them), then wait."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pipes = {pipe: bytearray() for pipe in (self.stdout, self.stderr) if pipe is not None}
        with selectors.DefaultSelector() as selector:
            for pipe in pipes:
                selector.register(pipe, selectors.EVENT_READ)
            while selector.get_map():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(self.args, timeout)
                for key, _ in selector.select(left):
                    chunk = os.read(key.fd, 1 << 16)
                    if chunk:
                        pipes[key.fileobj] += chunk
                    else:
                        selector.unregister(key.fileobj)
                        key.fileobj.close()
        self.wait(None if deadline is None else max(deadline - time.monotonic(), 0))
        outputs = [None if pipe is None else self._decoded(bytes(pipes[pipe])) for pipe in (self.stdout, self.stderr)]
        return outputs[0], outputs[1]

    def _decoded(self, data: bytes) -> str | bytes:
        """As `text=True` decodes: the locale's encoding, strictly, with universal newlines."""
        if not self.text:
            return data
        return data.decode(locale.getpreferredencoding(False)).replace("\r\n", "\n").replace("\r", "\n")


class WarmStarter:
    """The warm servers of one test process, started on first use and stopped by `close`: server 0 for
    `popen` and `run` unless they name another, and one per torchrun rank for relays."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.sockets = tempfile.mkdtemp(prefix="gptforge-warm-")  # short: a socket's path has 107 bytes at most
        self.servers: dict[int, subprocess.Popen] = {}
        self.startup: dict[str, str | None] = {}  # STARTUP_VARIABLES as the servers started with them

    def log(self, server: int) -> Path:
        return self.folder / f"server-{server}.log"

    def ensure(self, server: int) -> str:
        """Server `server`'s socket, starting the server if it is not running yet."""
        running = self.servers.get(server)
        if running is not None and running.poll() is not None:
            raise RuntimeError(f"warm server {server} died: {self.log(server).read_text()}")
        if running is None:
            env = {name: value for name, value in os.environ.items() if name != "OMP_NUM_THREADS"}
            startup = {name: env.get(name) for name in STARTUP_VARIABLES}
            if self.startup and startup != self.startup:
                raise RuntimeError(f"warm server {server} would start with other interpreter settings than the "
                                   f"others: {startup} vs {self.startup}")
            self.startup = startup
            with self.log(server).open("wb") as log:
                self.servers[server] = subprocess.Popen(
                    [sys.executable, str(SERVER), socket_path(self.sockets, server)], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=log, env=env, cwd=self.folder)
            if self.servers[server].stdout.readline() != b"ready\n":  # or the end of its output: it failed
                raise RuntimeError(f"warm server {server} did not start: {self.log(server).read_text()}")
        return socket_path(self.sockets, server)

    def close(self) -> None:
        """Stop the servers (what still runs is killed); what a server printed of its own is an error, for a
        fresh process would have printed it to the test's stderr."""
        failures = []
        try:
            for server, process in self.servers.items():
                process.stdin.close()
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                process.stdout.close()
                if process.returncode != 0 or self.log(server).read_text():
                    failures.append(f"warm server {server} ended {process.returncode}: {self.log(server).read_text()}")
        finally:
            shutil.rmtree(self.sockets, ignore_errors=True)
        assert not failures, failures

    def popen(self, args: list[str], *, stdin: Any = None, stdout: Any = None, stderr: Any = None,
              env: dict[str, str] | None = None, cwd: str | Path | None = None, text: bool = False,
              start_new_session: bool = False, server: int = 0) -> WarmProcess:
        """As `subprocess.Popen`; `server` picks the warm server, each with a hash seed of its own."""
        if args[0] != sys.executable:
            raise ValueError(f"the warm server runs this Python, not {args[0]}")
        if stdin == subprocess.PIPE:
            raise ValueError("the warm server takes stdin from a file, a descriptor or DEVNULL, not a pipe")
        env = dict(os.environ if env is None else env)
        socket_file = self.ensure(server)
        changed = [name for name in STARTUP_VARIABLES if env.get(name) != self.startup[name]]
        if changed:
            raise ValueError(f"a warm child keeps its server's {', '.join(changed)}; start a fresh interpreter")
        pipes: dict[str, IO[bytes]] = {}
        theirs: list[int] = []  # descriptors opened here for the child, closed here once it has them

        def descriptor(name: str, given: Any, default: int) -> int:
            if given is None:
                return default
            if given == subprocess.DEVNULL:
                theirs.append(os.open(os.devnull, os.O_RDWR))
                return theirs[-1]
            if given == subprocess.PIPE:
                read_end, write_end = os.pipe()
                pipes[name] = os.fdopen(read_end, "rb", buffering=0)
                theirs.append(write_end)
                return write_end
            return given if isinstance(given, int) else given.fileno()

        fds = [descriptor("stdin", stdin, 0), descriptor("stdout", stdout, 1)]
        fds.append(fds[1] if stderr == subprocess.STDOUT else descriptor("stderr", stderr, 2))
        try:
            connection = send_request(socket_file, args[1:], fds, env=env, cwd=str(cwd or os.getcwd()),
                                      new_session=start_new_session)
            return WarmProcess(connection, args, pipes, text)
        finally:
            for fd in theirs:
                os.close(fd)

    def relay_command(self, program: list[str], shift: int = 0) -> list[str]:
        """What torchrun starts in place of `python PROGRAM`: tests/warm_relay.py, which has server
        (LOCAL_RANK + shift) % 2 run it."""
        for server in range(SERVERS):
            self.ensure(server)
        return [str(RELAY), self.sockets, str(shift), *program]

    def run(self, args: list[str], *, capture_output: bool = False, text: bool = False,
            timeout: float | None = None, **kwargs: Any) -> subprocess.CompletedProcess:
        if capture_output:
            kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        process = self.popen(args, text=text, **kwargs)
        try:
            stdout, stderr = process.communicate(timeout)
        except BaseException:
            process.kill()
            process.wait()
            for pipe in (process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()
            raise
        return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)
