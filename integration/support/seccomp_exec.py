#!/usr/bin/python3
"""Runs a command under a system-call allow-list written as systemd's SystemCallFilter= (groups
such as @system-service expanded, recursively, by systemd-analyze), with the default action
systemd uses: any other system call kills the process (SIGSYS). For tests that cannot start the
unit under systemd itself.

    seccomp_exec.py 'FILTER' COMMAND [ARG...]
"""
import os
import subprocess
import sys

import seccomp


def expand(item, seen):
    if not item.startswith("@"):
        return {item}
    if item in seen:
        return set()
    seen.add(item)
    listing = subprocess.run(
        ["systemd-analyze", "syscall-filter", item], capture_output=True, text=True, check=True
    ).stdout
    names = set()
    for line in listing.splitlines()[1:]:
        word = line.strip()
        if word and not word.startswith("#"):
            names |= expand(word, seen)
    return names


def main():
    names, seen = set(), set()
    for item in sys.argv[1].split():
        names |= expand(item, seen)
    rules = seccomp.SyscallFilter(defaction=seccomp.KILL_PROCESS)
    for name in sorted(names):
        try:
            rules.add_rule(seccomp.ALLOW, name)
        except (RuntimeError, ValueError):
            pass  # listed by systemd, but not a system call of this architecture
    rules.load()
    os.execv(sys.argv[2], sys.argv[2:])


if __name__ == "__main__":
    main()
