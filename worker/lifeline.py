"""Children that die with their parent: `python -I lifeline.py PARENT_PID -- COMMAND ...`.

A C2 processor proves for minutes on the GPU. If its worker is killed outright (kill -9, the
OOM killer), nothing tells the processor: it would keep the card busy while the restarted worker
starts the same task on it again. (The supervisor's workers likewise.) So on Linux such a child
is started through this module, which asks the kernel to SIGKILL it when its parent dies
(PR_SET_PDEATHSIG, kept across exec) and then becomes the command. The signal follows the death
of the thread that started the child: the asyncio loop's thread, which lives as long as the
parent does.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Sequence

PR_SET_PDEATHSIG = 1
#: The exit status of a command that could not be started, as a shell gives it.
CANNOT_RUN = 127


def bound(argv: Sequence[str]) -> list[str]:
    """argv, started so that it is killed when this process dies (as it is, off Linux). This
    file runs by its path in isolated mode (-I): the child's environment (PYTHONHOME of a
    processor's own Python, say) and working folder must not change how it starts; it needs
    only the standard library."""
    if not sys.platform.startswith("linux"):
        return list(argv)
    return [sys.executable, "-I", __file__, str(os.getpid()), "--", *argv]


def main(args: Sequence[str]) -> int:
    if len(args) < 3 or args[1] != "--" or not args[0].isdigit():
        print("usage: python -I lifeline.py PARENT_PID -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    parent, command = int(args[0]), list(args[2:])
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        print(f"lifeline: prctl failed ({os.strerror(ctypes.get_errno())}); {command[0]} will "
              "outlive its parent", file=sys.stderr)
    if os.getppid() != parent:  # it died before the request: the signal will never come
        return 1
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"cannot run {command[0]}: {exc.strerror or exc}", file=sys.stderr)
    return CANNOT_RUN


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
