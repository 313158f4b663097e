"""Start-up failures an operator can fix, named by the setting that fixes them.

The server raises `StartupError` instead of letting an `OSError` from deep inside aiohttp or
SQLite escape: the command line turns it into one line naming the flag, the ``esl.toml`` key
and the environment variable (`eslserver.cli.errors`), where a traceback would bury it.
"""

from __future__ import annotations

import errno
import socket

__all__ = ["StartupError", "listen_error", "os_reason"]


class StartupError(RuntimeError):
    """The server cannot start; ``setting`` (a `Settings` field) is what to change."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting


def os_reason(exc: OSError) -> str:
    """``Permission denied: '/var/lib/esl'``: the reason and the file, without ``[Errno 13]``."""
    reason = exc.strerror or str(exc)
    return f"{reason}: {exc.filename!r}" if exc.filename else reason


def listen_error(what: str, host: str, port: int, exc: OSError, *, port_setting: str,
                 host_setting: str | None = None) -> StartupError:
    """The error for a listening socket that cannot be opened (`what`: ``HTTP``): a busy or
    forbidden port is blamed on `port_setting`, an address that is not this machine's (or
    no address at all) on `host_setting`."""
    if exc.errno == errno.EADDRINUSE:
        return StartupError(port_setting, f"{what} port {port} on {host} is already in use "
                                          "(another eslserver, or another program)")
    host_problem = isinstance(exc, socket.gaierror) or exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)
    setting = host_setting if host_problem and host_setting else port_setting
    return StartupError(setting, f"cannot listen for {what} on {host}:{port}: {os_reason(exc)}")
