"""`python tests/warm_relay.py SOCKETS SHIFT -m MODULE ARGS` (or `... SCRIPT.py ARGS`): the program run by a warm
server (tests/warm_server.py; server (LOCAL_RANK + SHIFT) % 2 of those in folder SOCKETS) on this
process's stdin, stdout, stderr, environment and working directory, in a session of its own and unbuffered, as
torchrun starts its workers. Signals sent to this process go on to it (those that come before it has started,
once it has), and this process ends as it ends: the same exit status, or killed by the same signal. Were this
process killed (SIGKILL cannot be passed on), the server kills the program too.

torchrun starts it in place of each training process (tests/test_distributed.py): a launch then imports torch
once, in torchrun, instead of three times.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from warm import SERVERS, receive_child, receive_status, send_request, signal_child, socket_path

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def die_like(signum: int) -> None:
    """End this process by `signum`, with its default action (Python ignores SIGPIPE, for one)."""
    with contextlib.suppress(OSError, ValueError):  # SIGKILL and SIGSTOP keep theirs
        signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    sys.exit(128 + signum)  # a signal whose default is to carry on (SIGCHLD, SIGURG, SIGWINCH)


def main() -> None:
    sockets, shift, *program = sys.argv[1:]
    child: dict[str, int] = {}
    early: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if "pidfd" in child:
            signal_child(child["pidfd"], signum)
        else:
            early.append(signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)
    server = (int(os.environ.get("LOCAL_RANK", "0")) + int(shift)) % SERVERS
    connection = send_request(socket_path(sockets, server), program, [0, 1, 2], env=dict(os.environ),
                              cwd=os.getcwd(), new_session=True, unbuffered=True)
    _, child["pidfd"] = receive_child(connection)
    for signum in early:
        signal_child(child["pidfd"], signum)
    status = receive_status(connection)
    if status < 0:  # killed by a signal: so is this process, for torchrun to see
        die_like(-status)
    sys.exit(status)


if __name__ == "__main__":
    main()
