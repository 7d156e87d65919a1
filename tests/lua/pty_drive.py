#!/usr/bin/env python3
"""pty_drive.py TIMEOUT PROMPT -- COMMAND... : run COMMAND on a pseudo-terminal, as a user at
a terminal would, and type the lines given on stdin one at a time, each after COMMAND prints
PROMPT. Prints everything COMMAND wrote (the terminal's echo of the typed lines included) and
exits with COMMAND's status; 124 when COMMAND did not print the prompt, or did not end,
within TIMEOUT seconds of the previous step. For tests of interactive commands
(tests/lua/test_chat.lua)."""
import os
import pty
import select
import sys
import time


def main():
    timeout, prompt = float(sys.argv[1]), sys.argv[2].encode()
    cmd = sys.argv[sys.argv.index("--") + 1:]
    lines = sys.stdin.read().splitlines()
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(cmd[0], cmd)
    # PTY_COLUMNS: the terminal's width (rows 24), as a resized window would give
    cols = int(os.environ.get("PTY_COLUMNS", "0"))
    if cols > 0:
        import fcntl
        import struct
        import termios
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, cols, 0, 0))
    out = b""

    def read_until(pred):
        nonlocal out
        deadline = time.monotonic() + timeout
        while not pred():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            r, _, _ = select.select([fd], [], [], left)
            if r:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # the child closed the terminal
                    return pred()
                if not chunk:
                    return pred()
                out += chunk
        return True

    seen = 0
    for line in lines:
        if not read_until(lambda: out.count(prompt) > seen):
            sys.stdout.write(out.decode("utf-8", "replace"))
            sys.stdout.write("\npty_drive: no prompt %r within %g s\n" % (prompt.decode(), timeout))
            os.kill(pid, 9)
            sys.exit(124)
        seen = out.count(prompt)
        os.write(fd, line.encode() + b"\r")
    # the last line should end it: read to the end of its output, then its status
    closed = [False]

    def ended():
        return closed[0]

    def read_rest():
        nonlocal out
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], deadline - time.monotonic())
            if not r:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                closed[0] = True
                return
            out += chunk

    read_rest()
    status = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
            break
        time.sleep(0.05)
    sys.stdout.write(out.decode("utf-8", "replace"))
    if status is None or not ended():
        sys.stdout.write("\npty_drive: the command did not end within %g s of its last line\n" % timeout)
        os.kill(pid, 9)
        sys.exit(124)
    sys.exit(os.waitstatus_to_exitcode(status))


main()
