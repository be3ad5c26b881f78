"""Loaded at start-up by every Python process of a hostile-corpus entry (this folder is on their PYTHONPATH):
an audit hook that records each attempt to reach an address other than loopback, and each socket bound to
one, as a line in a file per process under $WORKBENCH_HOSTILE_NET. The corpus harness reads them.

It imports nothing at start-up beyond what Python already has loaded: a module imported here would be
cached before the working folder reaches sys.path, hiding a planted one from the process."""

from __future__ import annotations

import os
import sys

FOLDER = os.environ.get("WORKBENCH_HOSTILE_NET")
EVENTS = {"socket.connect": "connect", "socket.sendto": "send", "socket.sendmsg": "send", "socket.bind": "bind"}


def off_loopback(address: object) -> str | None:
    """The host of an internet address that is not loopback (a name counts: resolving it leaves the machine)."""
    if not isinstance(address, tuple) or not address or not isinstance(address[0], str):
        return None  # a Unix socket's path, or no address (sendmsg on a connected socket)
    host = address[0]
    if host == "localhost":
        return None
    if host == "":
        return "0.0.0.0"  # every interface
    import ipaddress

    try:
        return None if ipaddress.ip_address(host.split("%")[0]).is_loopback else host
    except ValueError:
        return host


def record(event: str, args: tuple[object, ...]) -> None:
    kind = EVENTS.get(event)
    if kind is None or len(args) < 2:
        return
    address = args[1]
    host = off_loopback(address)
    if host is None:
        return
    port = address[1] if isinstance(address, tuple) and len(address) > 1 else None
    line = f"{kind}\t{host}\t{port}\t{os.getpid()}\t{' '.join(sys.argv[:6])}\n"
    try:
        handle = os.open(os.path.join(FOLDER or ".", f"{os.getpid()}.tsv"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            os.write(handle, line.encode("utf-8", "replace"))
        finally:
            os.close(handle)
    except OSError:
        pass


if FOLDER:
    sys.addaudithook(record)
