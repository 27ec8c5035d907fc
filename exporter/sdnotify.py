"""Minimal sd_notify(3): tell systemd we are ready, alive, or stopping.

The unit runs with ``Type=notify`` and ``WatchdogSec=``; systemd passes the
socket in ``$NOTIFY_SOCKET`` and the watchdog deadline in ``$WATCHDOG_USEC``.
The protocol is one datagram of ``KEY=VALUE`` lines on an AF_UNIX socket, so
we speak it directly instead of depending on python-systemd (not on PyPI
for every Jetson Python, and a C build on the board).  Outside systemd every
call is a cheap no-op that returns False.
"""

import os
import socket
from typing import Optional

__all__ = ["notify", "watchdog_period_s"]


def _address(raw: str) -> Optional[str]:
    """The socket address from ``$NOTIFY_SOCKET``; '@' means the abstract namespace."""
    if not raw:
        return None
    if raw.startswith("@"):
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    # systemd also accepts "vsock:CID:PORT"; a daemon on a Jetson never gets one.
    return None


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``, ``"WATCHDOG=1"``, ``"STOPPING=1"``).

    Returns True when the datagram was sent, False when there is no notify
    socket or sending failed: a daemon must keep running without systemd.
    """
    address = _address(os.environ.get("NOTIFY_SOCKET", ""))
    if address is None:
        return False
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | getattr(socket, "SOCK_CLOEXEC", 0))
    except OSError:
        return False
    try:
        sock.connect(address)
        sock.sendall(state.encode("utf-8"))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def watchdog_period_s() -> Optional[float]:
    """How often to send ``WATCHDOG=1`` (half of ``$WATCHDOG_USEC``), or None.

    None when the watchdog is off, the value is malformed, or
    ``$WATCHDOG_PID`` names another process (the variables were inherited
    by a child that systemd is not watching).
    """
    raw = os.environ.get("WATCHDOG_USEC", "")
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 1e6 / 2.0
