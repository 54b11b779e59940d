"""`python tests/warm_server.py SOCKET`: a process that has imported torch and gptforge once and forks a child for
each `python -m MODULE ARGS` or `python SCRIPT ARGS` a test asks for (tests/warm.py is the client).

A fresh gptforge process spends about 3 s of CPU importing torch and torch._dynamo (which torch's optimizers
import on first use) before it does anything; the kill -9, signal and torchrun tests start dozens. A forked child
starts with those modules loaded, then becomes the process the test asked for: its own stdin, stdout and stderr,
its environment, working directory and thread count, a new session if asked, unbuffered output if asked (`-u`),
the module or script run as `__main__`, and the interpreter's normal exit (atexit handlers, thread joins,
flushes). It is a real process: signals, kill -9 and exit statuses behave as with `subprocess.Popen`.

Protocol, one SOCK_SEQPACKET connection a child: the request (JSON: module or script, args, env, cwd, new_session,
unbuffered) with
its three descriptors, answered by the child's PID, then its exit status as `subprocess` reports it (-N for
signal N). The server quits when its stdin closes: the test session that started it has ended.
"""

from __future__ import annotations

import gc
import io
import json
import os
import runpy
import select
import socket
import sys

PRELOAD = ("torch", "torch._dynamo", "gptforge.cli", "gptforge.train.session")


def serve(listener: socket.socket) -> tuple[dict, list[int]]:
    """Fork a child per request and report its exit; returns only in a child, with its request."""
    children: dict[int, socket.socket] = {}
    while True:
        readable, _, _ = select.select([listener, sys.stdin], [], [], 0.005 if children else None)
        if sys.stdin in readable and not os.read(sys.stdin.fileno(), 1):
            os._exit(0)
        if listener in readable:
            connection, _ = listener.accept()
            message, fds, _, _ = socket.recv_fds(connection, 1 << 20, 3)
            pid = os.fork()
            if pid == 0:
                listener.close()
                connection.close()
                for other in children.values():
                    other.close()
                return json.loads(message), fds
            for fd in fds:
                os.close(fd)
            connection.send(str(pid).encode())
            children[pid] = connection
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            connection = children.pop(pid)
            connection.send(str(os.waitstatus_to_exitcode(status)).encode())
            connection.close()


def standard_stream(fd: int, template: io.TextIOWrapper, unbuffered: bool) -> io.TextIOWrapper:
    """sys.stdin/stdout/stderr as a fresh interpreter opens them on `fd`: line-buffered on a terminal
    (stderr always), write-through when unbuffered."""
    unbuffered = unbuffered and fd != 0
    raw = io.FileIO(fd, "rb" if fd == 0 else "wb", closefd=False)
    buffered = raw if unbuffered else (io.BufferedReader(raw) if fd == 0 else io.BufferedWriter(raw))
    return io.TextIOWrapper(buffered, encoding=template.encoding, errors=template.errors,
                            line_buffering=fd == 2 or os.isatty(fd), write_through=unbuffered)


def become(request: dict, fds: list[int], default_threads: int) -> None:
    """Turn this freshly forked child into `python -m MODULE ARGS` as the test asked for it."""
    import torch

    if request["new_session"]:
        os.setsid()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or default_threads))
    templates = (sys.__stdin__, sys.__stdout__, sys.__stderr__)
    unbuffered = request["unbuffered"] or bool(os.environ.get("PYTHONUNBUFFERED"))
    sys.stdin, sys.stdout, sys.stderr = (standard_stream(fd, template, unbuffered)
                                         for fd, template in enumerate(templates))
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
    if request.get("script"):
        sys.path[0] = os.path.dirname(os.path.abspath(request["script"]))  # as `python SCRIPT` puts it
        sys.argv = [request["script"], *request["args"]]
        runpy.run_path(request["script"], run_name="__main__")
    else:
        sys.path[0] = os.getcwd()  # as `python -m` puts it
        sys.argv = [request["module"], *request["args"]]
        sys.modules.pop(request["module"], None)  # run as __main__, as a fresh `python -m` does
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)


def main() -> None:
    import importlib

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
