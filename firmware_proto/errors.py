"""The one error family of `firmware_proto`.

Everything a decoder or a session refuses raises a `ProtocolError` (a `ValueError`: it is about
bad input), so a caller that handles radio input needs exactly one ``except`` clause. Messages
name the field and quote the bytes ("crc: expected 1f2e, got 0000").
"""

from __future__ import annotations

__all__ = ["ProtocolError", "FrameError", "AuthError", "CommandError", "TransferError"]


class ProtocolError(ValueError):
    """Base of every error `firmware_proto` raises about bytes or protocol state."""


class FrameError(ProtocolError):
    """Malformed frame: bad length, CRC, version, type or field value."""


class AuthError(ProtocolError):
    """A frame whose MAC does not verify (forged, wrong key) or whose counter was already used."""


class CommandError(ProtocolError):
    """An ESL control-point command or response that the table does not describe."""


class TransferError(ProtocolError):
    """An image transfer that cannot go on (refused offer, bad part, too many retries).

    ``code`` is the error byte the label reports for it (an ESL error code or a vendor code).
    """

    def __init__(self, message: str, code: int = 0x01) -> None:
        super().__init__(message)
        self.code = int(code)
