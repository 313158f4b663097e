"""Start-up failures an operator can fix, named by the setting that fixes them.

The server raises `StartupError` instead of letting an `OSError` from deep inside aiohttp or
SQLite escape: the command line turns it into one line naming the flag, the ``esl.toml`` key
and the environment variable (`eslserver.cli.errors`), where a traceback would bury it.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import ssl
from pathlib import Path

__all__ = ["StartupError", "http_tls_context", "is_loopback", "listen_error", "os_reason"]


class StartupError(RuntimeError):
    """The server cannot start; ``setting`` (a `Settings` field) is what to change, and
    ``fix``, when given, says how better than naming the setting's places would."""

    def __init__(self, setting: str, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting
        self.fix = fix


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


def http_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The server-side TLS context of the HTTP API (TLS 1.2 at least); a certificate or key
    that cannot be read or does not match is a `StartupError` naming the file, never a
    traceback (and never the key's bytes)."""
    for setting, path in (("http_tls_cert", cert), ("http_tls_key", key)):
        try:
            with path.open("rb"):
                pass
        except OSError as exc:  # ssl's own error does not name the file
            raise StartupError(setting, f"HTTPS: cannot read {os_reason(exc)}") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except ssl.SSLError as exc:  # (an OSError too) the text names what is wrong, never the key
        raise StartupError("http_tls_cert", f"HTTPS: {cert} and {key} are not a PEM certificate and its "
                                            f"private key ({exc.reason or exc})") from None
    return context


def is_loopback(host: str) -> bool:
    """Whether listening on `host` keeps traffic on this machine (``127.0.0.1``, ``::1``,
    ``localhost``); ``0.0.0.0``, ``::`` and any other name reach the network."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
