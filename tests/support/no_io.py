"""A pytest plugin (``-p tests.support.no_io``) that fails any network connection or
child process in the run that loads it: the proof that the unit tier does no
I/O and starts no services (tests/unit/test_unit_tier.py)."""

from __future__ import annotations

import socket
import subprocess


class IOAttempted(AssertionError):
    pass


def _refuse(what: str):
    def refuse(*args, **kwargs):
        raise IOAttempted(f"the unit tier attempted {what}: {args[1:2]}")

    return refuse


# At import, before any conftest is loaded: the refusal covers pytest_configure too.
socket.socket.connect = _refuse("a network connection")
socket.socket.connect_ex = _refuse("a network connection")
subprocess.Popen.__init__ = _refuse("to start a process")
