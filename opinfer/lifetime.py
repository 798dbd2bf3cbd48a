"""Child processes that never outlive their supervisor.

`opinfer devnet up` starts anvil, the coordinator, nodes and a challenger. A supervisor
can die without running its clean-up: killed with SIGKILL, or by SIGPIPE/BrokenPipeError
when its output goes through a pipe whose reader quit (`make up | tee log`, Ctrl-C). On
Linux the kernel can deliver a signal to a child when its parent dies
(prctl(PR_SET_PDEATHSIG)); we ask for SIGTERM so the services shut down as on Ctrl-C.
Elsewhere the hook is a no-op and only the supervisor's own clean-up applies.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

PR_SET_PDEATHSIG = 1


def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def die_with_parent(parent_pid: int | None = None) -> None:
    """Run in the child between fork and exec (Popen's preexec_fn): SIGTERM when the parent dies.

    `parent_pid` closes the race where the parent died before prctl ran: then the child has
    already been re-parented and must not start at all.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = _libc()
    if libc is None:
        return
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def child_preexec():
    """A preexec_fn bound to the current process as the parent, or None off the main thread.

    The kernel sends the parent-death signal when the *thread* that forked the child exits,
    not the process: a child started from a short-lived worker thread would be killed with
    it. Supervisors start their services from the main thread, which lives as long as they do.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()
    return lambda: die_with_parent(parent)


def say(*args, **kwargs) -> None:
    """print() that survives a closed stdout: a supervisor must reach its clean-up even
    when the pipe it prints to is gone (`make up | tee`, then Ctrl-C kills tee first)."""
    try:
        print(*args, **kwargs)
    except (BrokenPipeError, OSError, ValueError):
        try:
            # Further writes would raise again at interpreter exit: point stdout at /dev/null.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
