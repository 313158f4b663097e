"""CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final xor).

Why CRC-16 and not CRC-32: frames are at most `MAX_FRAME` (1024) bytes, and for messages up to
4095 bytes CRC-16/CCITT keeps Hamming distance 4 (every 1-, 2- and 3-bit error and every burst of
up to 16 bits is caught). It is there to drop radio noise cheaply and to find frame boundaries
when resynchronising a byte stream; authenticated frames also carry an AES-CCM tag, which is the
real defence against deliberate change. Two more bytes per frame for CRC-32 would buy nothing the
tag does not already give, on a link where every byte costs battery.
"""

from __future__ import annotations

import binascii

__all__ = ["crc16"]


def crc16(data: bytes | bytearray | memoryview, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE of `data` (check value of b"123456789" is 0x29B1).

    `binascii.crc_hqx` is this very polynomial (non-reflected 0x1021) computed in C; starting it
    from 0xFFFF gives the CCITT-FALSE variant.
    """
    return binascii.crc_hqx(bytes(data), crc)
