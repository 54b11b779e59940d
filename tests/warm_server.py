"""`python tests/warm_server.py SOCKET`: a process that has imported torch and gptforge once and forks a child for
each `python -m MODULE ARGS` or `python SCRIPT ARGS` a test asks for (tests/warm.py is the client).

A fresh gptforge process spends about 3 s of CPU importing torch and torch._dynamo (which torch's optimizers
import on first use) before it does anything; the kill -9, signal and torchrun tests start dozens. A forked child
starts with those modules loaded, then becomes the process the test asked for: its own stdin, stdout and stderr
(opened as a fresh interpreter opens them), its environment, working directory and torch thread count, a new
session if asked, unbuffered output if asked (`-u`), the module or script run as `__main__`, and the
interpreter's normal exit (atexit handlers, thread joins, flushes, C++ static destructors). It is a real
process: signals, kill -9 and exit statuses behave as with `subprocess.Popen`.

What a child shares with its server, unlike a fresh interpreter: the hash seed (so tests/warm.py runs two
servers, and the tests alternate between them where processes hand state on), what the interpreter read from
its environment at start-up (tests/warm.py refuses a request that changes it), and numpy's BLAS thread pool,
sized when the server imported numpy (gptforge does no BLAS work in numpy). Python's and numpy's global random
states are drawn afresh in each child, as a fresh interpreter draws them.

Protocol, one SOCK_SEQPACKET connection a child: the request (JSON: module or script, args, env, cwd,
new_session, unbuffered) with its three descriptors; the answer is the child's PID with a pidfd for it (signals
sent through a pidfd never reach another process that reused the PID), then its exit status as `subprocess`
reports it (-N for signal N). A client that goes away first (a relay killed by torchrun) takes its child with it:
SIGKILL, to its whole process group when it has a session of its own. A request that is not whole (no
message, a cut one, not three descriptors) is dropped. The server quits, killing what still runs, when its
stdin closes: the test session that started it has ended.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import io
import json
import os
import runpy
import select
import signal
import socket
import sys
from dataclasses import dataclass

PRELOAD = ("torch", "torch._dynamo", "gptforge.cli", "gptforge.train.session")


@dataclass
class Child:
    pid: int
    pidfd: int
    connection: socket.socket | None  # None once its client went away
    leads_a_group: bool  # started in a session of its own, so its PID is its process group's


def answer(child: Child, message: bytes, fds: tuple[int, ...] = ()) -> None:
    """Tell the child's client; a client gone (a relay killed by torchrun) means the child must go too."""
    if child.connection is None:
        return
    try:
        socket.send_fds(child.connection, [message], list(fds))
    except OSError:
        client_gone(child)


def client_gone(child: Child) -> None:
    kill(child)
    child.connection.close()
    child.connection = None


def kill(child: Child) -> None:
    """SIGKILL to the child, and to the processes it started in its group; not yet reaped, so its PID (and
    group) cannot be another's."""
    with contextlib.suppress(ProcessLookupError):
        if child.leads_a_group:
            os.killpg(child.pid, signal.SIGKILL)
        else:
            signal.pidfd_send_signal(child.pidfd, signal.SIGKILL)


def whole_request(connection: socket.socket) -> tuple[dict, list[int]] | None:
    """The request on a new connection and its three descriptors, or None (all closed) for anything less."""
    try:
        message, fds, flags, _ = socket.recv_fds(connection, 1 << 20, 3)
    except OSError:
        message, fds, flags = b"", [], 0
    if message and len(fds) == 3 and not flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        with contextlib.suppress(ValueError):
            return json.loads(message), fds
    for fd in fds:
        os.close(fd)
    connection.close()
    return None


def serve(listener: socket.socket) -> tuple[dict, list[int]]:
    """Fork a child per request and report its end; returns only in a child, with its request."""
    children: dict[int, Child] = {}  # by pidfd
    while True:
        clients = {child.connection.fileno(): child for child in children.values() if child.connection}
        readable, _, _ = select.select([listener, sys.stdin, *children, *clients], [], [])
        if sys.stdin in readable and not os.read(sys.stdin.fileno(), 1):
            for child in children.values():
                kill(child)
                os.waitpid(child.pid, 0)
            os._exit(0)
        if listener in readable:
            connection, _ = listener.accept()
            received = whole_request(connection)
            if received is None:
                continue
            request, fds = received
            pid = os.fork()
            if pid == 0:
                listener.close()
                connection.close()
                for child in children.values():
                    os.close(child.pidfd)
                    if child.connection:
                        child.connection.close()
                return request, fds
            for fd in fds:
                os.close(fd)
            child = Child(pid, os.pidfd_open(pid), connection, request["new_session"])
            children[child.pidfd] = child
            answer(child, str(pid).encode(), (child.pidfd,))
        for fd in readable:
            if fd in clients and clients[fd].connection is not None:  # EOF: clients send nothing after asking
                client_gone(clients[fd])
        for fd in readable:
            if isinstance(fd, int) and fd in children:  # a pidfd turns readable when its process ends
                child = children.pop(fd)
                _, status = os.waitpid(child.pid, 0)
                answer(child, str(os.waitstatus_to_exitcode(status)).encode())
                os.close(child.pidfd)
                if child.connection:
                    child.connection.close()


def standard_stream(fd: int, template: io.TextIOWrapper, unbuffered: bool) -> io.TextIOWrapper:
    """sys.stdin/stdout/stderr as a fresh interpreter opens them on `fd` (POSIX): no newline translation;
    output line-buffered on a terminal (stderr always) or, when unbuffered, written through."""
    if fd == 0:
        binary = open(0, "rb", closefd=False)  # noqa: SIM115 (sys.stdin's, for the process's life)
        return io.TextIOWrapper(binary, encoding=template.encoding, errors=template.errors, newline="\n",
                                line_buffering=os.isatty(0))
    binary = open(fd, "wb", buffering=0 if unbuffered else -1, closefd=False)  # noqa: SIM115 (as above)
    return io.TextIOWrapper(binary, encoding=template.encoding, errors=template.errors, newline="\n",
                            line_buffering=not unbuffered and (fd == 2 or os.isatty(fd)), write_through=unbuffered)


def become(request: dict, fds: list[int], default_threads: int) -> None:
    """Turn this freshly forked child into `python -m MODULE ARGS` or `python SCRIPT ARGS` as asked."""
    import numpy
    import torch

    numpy.random.seed()  # from the OS's entropy, as a fresh interpreter's first use seeds it (Python's random
    # module reseeds itself after a fork)
    if request["new_session"]:
        os.setsid()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or default_threads))
    unbuffered = request["unbuffered"] or bool(os.environ.get("PYTHONUNBUFFERED"))
    templates = (sys.__stdin__, sys.__stdout__, sys.__stderr__)
    sys.stdin, sys.stdout, sys.stderr = (standard_stream(fd, template, unbuffered)
                                         for fd, template in enumerate(templates))
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
    if request["script"]:
        sys.path[0] = os.path.dirname(os.path.abspath(request["script"]))  # as `python SCRIPT` puts it
        sys.argv = [request["script"], *request["args"]]
        runpy.run_path(request["script"], run_name="__main__")
    else:
        module = request["module"]
        sys.path[0] = os.getcwd()  # as `python -m` puts it
        sys.argv = [module, *request["args"]]
        if importlib.util.find_spec(module).submodule_search_locations is not None:
            module += ".__main__"  # a package runs its __main__; the package itself stays imported, as it would
        sys.modules.pop(module, None)  # run as __main__, as a fresh `python -m` does, not the loaded copy
        runpy.run_module(module, run_name="__main__", alter_sys=True)


def main() -> None:
    for name in PRELOAD:
        importlib.import_module(name)
    import torch

    default_threads = torch.get_num_threads()
    gc.freeze()  # the children's collections and exits leave the loaded modules' pages shared, not copied
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(sys.argv[1])
    listener.listen(64)
    print("ready", flush=True)
    request, fds = serve(listener)
    become(request, fds, default_threads)


if __name__ == "__main__":
    main()
