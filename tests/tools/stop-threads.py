#!/usr/bin/env python3
"""Stops some threads of a running process while the others run on, for the end-to-end tests:
a worker stuck in a call that does not return (a read from a stalled disk, a starved CPU) without
a hook in the product.

    stop-threads.py PID NAME_PREFIX

Attaches with ptrace to every thread of PID whose name (/proc/PID/task/TID/comm) starts with
NAME_PREFIX (PTRACE_SEIZE, then PTRACE_INTERRUPT: the thread stays in a ptrace stop that only this
tracer ends), prints "stopped TID..." once all are stopped, then waits for its standard input to
close and detaches them ("released"). If this process dies instead, the kernel detaches them.
Needs ptrace rights over PID (root, or no Yama restriction: under Yama's default a process may
trace only its descendants, and PID is this script's sibling); exits 77 when ptrace is refused."""

import ctypes
import errno
import os
import sys

PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
WALL = 0x40000000  # __WALL: wait for threads too, not only children
NOT_PERMITTED = 77  # the exit code of a test that cannot run here

libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long


def ptrace(request, tid):
    if libc.ptrace(request, tid, None, None) == -1:
        code = ctypes.get_errno()
        raise OSError(code, f"ptrace({request:#x}, {tid}): {os.strerror(code)}")


def threads(pid, prefix):
    found = []
    for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as comm:
                if comm.read().strip().startswith(prefix):
                    found.append(int(tid))
        except FileNotFoundError:  # the thread ended meanwhile
            pass
    return found


def main():
    pid, prefix = int(sys.argv[1]), sys.argv[2]
    tids = threads(pid, prefix)
    if not tids:
        print(f"error: no thread of {pid} is named {prefix}*", file=sys.stderr)
        return 1
    attached = []
    try:
        for tid in tids:
            ptrace(PTRACE_SEIZE, tid)
            attached.append(tid)
            ptrace(PTRACE_INTERRUPT, tid)
            got, status = os.waitpid(tid, WALL)
            if got != tid or not os.WIFSTOPPED(status):
                raise OSError(0, f"thread {tid} did not stop (wait status {status:#x})")
        print("stopped " + " ".join(map(str, tids)), flush=True)
        sys.stdin.read()  # until the caller closes it
    except OSError as err:
        print(f"error: {err.strerror}", file=sys.stderr)
        return NOT_PERMITTED if err.errno == errno.EPERM else 1
    finally:
        for tid in attached:
            try:
                ptrace(PTRACE_DETACH, tid)
            except OSError as err:
                print(f"error: detaching {tid}: {err.strerror}", file=sys.stderr)
    print("released", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
