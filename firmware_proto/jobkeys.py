"""Job keys: what a gateway may seal frames with for one job, and nothing more.

The label's long-term key never leaves the server (and the label). For each job the server
reserves a range of the label's counters, ``first .. last``, and derives a **job key**::

    K_job = AES-CMAC(label_key, 01 ‖ "esl job key" ‖ 00 ‖ mac(6) ‖ job_id u64 ‖ attempt u8
                                 ‖ first u32 ‖ last u32 ‖ 00 80)

(NIST SP 800-108 KDF in counter mode with AES-CMAC as the PRF: one block, counter 1, label
"esl job key", the context after the separator, output length 128 bits.) AES-CMAC needs only
the AES block a label already has for AES-CCM. The derivation is bound to the label, the job,
the attempt and the range, so two jobs (or two attempts of one) never share a key.

The server sends the gateway that key (encrypted to the gateway, see `firmware_proto.trust`)
and a **job ticket** (`firmware_proto.frames.JobTicket`): job id, attempt and range,
authenticated with the label key at counter ``first``. The gateway forwards the ticket
unchanged as the job's first frame. The label accepts it only above every counter it has
accepted (so a replayed ticket is refused), derives the same key, and from then on accepts
the job's frames under it only with counters ``first + 1 .. last``. It forgets the job key
when the job ends (`JobStatus` sent) or another ticket arrives. A leaked job key therefore
opens nothing outside its own range and job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.cmac import CMAC

from firmware_proto.auth import KEY_SIZE, Direction, FrameKey, seal
from firmware_proto.errors import AuthError
from firmware_proto.frames import JobTicket, address_bytes
from firmware_proto.wire import U8, U32, U64

__all__ = ["JOB_KEY_LABEL", "MAX_REPEATS", "RESULT_OK", "JobGrant", "EndedJob", "derive_job_key", "make_ticket"]

JOB_KEY_LABEL: Final = b"esl job key"
"""The KDF's label (domain separation from every other use of the label key)."""
RESULT_OK: Final = 0
"""`JobStatus.result` of a job that did what it was sent to do."""


def derive_job_key(label_key: bytes, address: str | bytes, job_id: int, attempt: int, first: int,
                   last: int) -> bytes:
    """The 16-byte job key for one job's counter range (see the module docstring)."""
    if not isinstance(label_key, bytes) or len(label_key) != KEY_SIZE:
        raise AuthError(f"label key must be {KEY_SIZE} bytes")
    if not 1 <= first <= last:
        raise AuthError(f"job key: counters must be 1 <= first <= last, got {first}..{last}")
    context = (address_bytes(address) + U64(job_id).serialize() + U8(attempt).serialize()
               + U32(first).serialize() + U32(last).serialize())
    mac = CMAC(algorithms.AES(label_key))
    mac.update(b"\x01" + JOB_KEY_LABEL + b"\x00" + context + b"\x00\x80")
    return mac.finalize()


def make_ticket(label_key: bytes, address: str | bytes, job_id: int, attempt: int, first: int,
                last: int) -> bytes:
    """The sealed `JobTicket` for a job (what only the server, holding the label key, can make)."""
    ticket = JobTicket(job_id=job_id, attempt=attempt, first=first, last=last)
    return seal(ticket, FrameKey(label_key), address_bytes(address), Direction.TO_LABEL, first)


@dataclass(slots=True)
class JobGrant:
    """The label's side of a running job: which counters its key covers. Kept in flash, so a
    label that reboots mid-job finishes it."""

    job_id: int
    attempt: int
    first: int
    last: int
    key: bytes = field(repr=False)

    def covers(self, counter: int) -> bool:
        """True for the counters the job's own frames may use (after the ticket's)."""
        return self.first < counter <= self.last


MAX_REPEATS: Final = 8
"""How often a label sends an ended job's `JobStatus` again: enough for a lossy link, and a
bound on what anybody on the air can make it transmit (the request needs no key)."""


@dataclass(slots=True)
class EndedJob:
    """The last job the label ended, and its final word, kept so that a gateway that missed
    the `JobStatus` can have the same bytes again (they change nothing and prove nothing new:
    the server accepts each status once). The job key itself is gone."""

    job_id: int
    first: int
    last: int
    status: bytes
    repeats: int = 0

    def covers(self, counter: int) -> bool:
        return self.first < counter <= self.last

    def repeat(self) -> bytes | None:
        """The status to send again, or None once it was sent `MAX_REPEATS` times."""
        if self.repeats >= MAX_REPEATS:
            return None
        self.repeats += 1
        return self.status
