"""`python tests/warm_relay.py SOCKET -m MODULE ARGS` (or `SOCKET SCRIPT.py ARGS`): the program run by the warm
server (tests/warm_server.py) on this process's stdin, stdout, stderr, environment and working directory,
unbuffered as torchrun starts its workers. Signals sent to this process go on to it, and this process ends as it
ends: the same exit status, or killed by the same signal.

torchrun starts it in place of each training process (tests/test_distributed.py): a launch then imports torch
once, in torchrun, instead of three times.
"""

from __future__ import annotations

import os
import signal
import sys

from warm import send_request

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def main() -> None:
    socket_path, *program = sys.argv[1:]
    connection = send_request(socket_path, program, [0, 1, 2], env=dict(os.environ), cwd=os.getcwd(),
                              unbuffered=True)
    pid = int(connection.recv(64))
    for signum in FORWARDED:
        signal.signal(signum, lambda received, _: os.kill(pid, received))
    status = int(connection.recv(64))
    if status < 0:  # killed by a signal: so is this process, for torchrun to see
        if -status in FORWARDED:
            signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    sys.exit(status)


if __name__ == "__main__":
    main()
