"""Who may give a gateway work: server signatures (Ed25519) and job keys sealed to a gateway (X25519).

- **Signatures.** The server signs every job envelope with its Ed25519 key; a gateway knows the
  server's public key (``server_public_key``, given when it is registered) and refuses an
  envelope whose signature does not verify. Ed25519: small keys and signatures (32 and 64
  bytes), fast, deterministic (no random number needed per signature), in every crypto library.
- **Sealed job keys.** A job key (`firmware_proto.jobkeys`) travels encrypted to the addressed
  gateway's own X25519 key: the server makes a fresh ephemeral X25519 key pair per envelope,
  ``shared = X25519(ephemeral, gateway)``, ``k = HKDF-SHA256(shared, salt = ephemeral_pub ‖
  gateway_pub, info = "esl job key seal v1")`` (32 bytes), and encrypts the job key with
  AES-256-GCM under ``k`` (nonce all zeros: ``k`` is used once), the associated data naming the
  job. Sealed = ephemeral public key (32) ‖ ciphertext (16) ‖ tag (16). A subscriber to the job
  topic without the gateway's private key learns nothing of the job key; another gateway cannot
  open it either.
- **Key endorsements.** When the server's signing key is rotated, the previous key signs the new
  public key (`Endorsement`: ``Ed25519_previous("esl server key endorsement v1" 00 ‖ previous_pub
  ‖ new_pub)``), and every envelope carries that endorsement until the previous key is deleted:
  a gateway that trusts the previous key checks the endorsement and follows (trusts the new key
  from then on). One step only: an endorsement is honoured only from the key the gateway trusts.

Keys travel as 64 hex digits (32 bytes) in settings and on the command line. Nothing here
quotes a key or a signature in an error message.
"""

from __future__ import annotations

import re
from typing import Final

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from firmware_proto.auth import KEY_SIZE
from firmware_proto.errors import ProtocolError

__all__ = [
    "PUBLIC_KEY_SIZE", "SIGNATURE_SIZE", "SEALED_KEY_SIZE", "TrustError", "SigningKey", "VerifyKey",
    "GatewayKey", "seal_job_key", "key_from_hex", "ENDORSEMENT_SIZE", "Endorsement",
]

PUBLIC_KEY_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64
SEALED_KEY_SIZE: Final = PUBLIC_KEY_SIZE + KEY_SIZE + 16
_SEAL_INFO: Final = b"esl job key seal v1"
_ENDORSE_CONTEXT: Final = b"esl server key endorsement v1\x00"
ENDORSEMENT_SIZE: Final = 2 * PUBLIC_KEY_SIZE + SIGNATURE_SIZE
"""An endorsement on the wire: endorser public key 32 ‖ new public key 32 ‖ signature 64."""
_NONCE: Final = bytes(12)
_HEX32: Final = re.compile(r"[0-9A-Fa-f]{64}")
_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw
_RAW_PRIV = serialization.PrivateFormat.Raw
_NO_ENC = serialization.NoEncryption()


class TrustError(ProtocolError):
    """A signature that does not verify, a sealed key that does not open, a key that is not one."""


def key_from_hex(text: str, what: str) -> bytes:
    """32 bytes from 64 hex digits (blanks around ignored); `TrustError` naming `what` otherwise
    (the text is not quoted: it may be a private key)."""
    text = text.strip() if isinstance(text, str) else ""
    if not _HEX32.fullmatch(text):
        raise TrustError(f"{what}: expected 64 hex digits (32 bytes), got {len(text)} characters")
    return bytes.fromhex(text)


class VerifyKey:
    """An Ed25519 public key: checks the server's signatures."""

    __slots__ = ("raw", "_key")

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, bytes) or len(raw) != PUBLIC_KEY_SIZE:
            raise TrustError(f"Ed25519 public key must be {PUBLIC_KEY_SIZE} bytes")
        self.raw = raw
        self._key = Ed25519PublicKey.from_public_bytes(raw)

    @classmethod
    def from_hex(cls, text: str, what: str = "server_public_key") -> VerifyKey:
        return cls(key_from_hex(text, what))

    def verify(self, signature: bytes, data: bytes) -> None:
        """`TrustError` unless `signature` is this key's signature over `data`."""
        if len(signature) != SIGNATURE_SIZE:
            raise TrustError(f"signature: expected {SIGNATURE_SIZE} bytes, got {len(signature)}")
        try:
            self._key.verify(signature, data)
        except InvalidSignature:
            raise TrustError("signature: does not verify under the server's public key") from None

    def hex(self) -> str:
        return self.raw.hex()

    @property
    def fingerprint(self) -> str:
        """The first 16 hex digits of the key: enough to tell keys apart in logs, status events
        and listings, and to compare by eye with ``esl trust server-key``."""
        return self.raw.hex()[:16]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifyKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"VerifyKey({self.raw.hex()})"


class SigningKey:
    """The server's Ed25519 private key (it signs every job envelope).

    ``endorsement`` is set on a key made by `endorsed_by`: envelopes it signs carry it, so that
    gateways still trusting the previous key follow to this one.
    """

    __slots__ = ("_key", "public", "endorsement")

    def __init__(self, key: Ed25519PrivateKey, endorsement: Endorsement | None = None) -> None:
        self._key = key
        self.public = VerifyKey(key.public_key().public_bytes(_RAW, _RAW_PUB))
        if endorsement is not None and endorsement.new_key != self.public:
            raise TrustError(f"endorsement: endorses key {endorsement.new_key.fingerprint}, "
                             f"not this key {self.public.fingerprint}")
        self.endorsement = endorsement

    def endorsed_by(self, previous: SigningKey) -> SigningKey:
        """This key, carrying `previous`'s endorsement of it (see `Endorsement`)."""
        return SigningKey(self._key, Endorsement.make(previous, self.public))

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_bytes(cls, raw: bytes) -> SigningKey:
        if not isinstance(raw, bytes) or len(raw) != 32:
            raise TrustError("Ed25519 private key must be 32 bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        """The 32-byte seed, for the key file (never logged)."""
        return self._key.private_bytes(_RAW, _RAW_PRIV, _NO_ENC)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def __repr__(self) -> str:
        return f"SigningKey(public={self.public.hex()})"


class Endorsement:
    """The previous server key's word that `new_key` is the server's key now.

    Made by the server when its key is rotated (`make`), carried in every envelope while the
    previous key is kept, checked by a gateway with `verify` against the key it trusts. The
    signed message names both keys under its own context string, so neither an envelope
    signature nor anything else the server signs can pass for one.
    """

    __slots__ = ("endorser", "new_key", "signature")

    def __init__(self, endorser: VerifyKey, new_key: VerifyKey, signature: bytes) -> None:
        if not isinstance(endorser, VerifyKey) or not isinstance(new_key, VerifyKey):
            raise TrustError("endorsement: endorser and new_key must be VerifyKeys")
        if endorser == new_key:
            raise TrustError(f"endorsement: key {new_key.fingerprint} endorses itself")
        if not isinstance(signature, bytes) or len(signature) != SIGNATURE_SIZE:
            raise TrustError(f"endorsement signature: expected {SIGNATURE_SIZE} bytes")
        self.endorser = endorser
        self.new_key = new_key
        self.signature = signature

    @staticmethod
    def _message(endorser: VerifyKey, new_key: VerifyKey) -> bytes:
        return _ENDORSE_CONTEXT + endorser.raw + new_key.raw

    @classmethod
    def make(cls, previous: SigningKey, new_key: VerifyKey) -> Endorsement:
        return cls(previous.public, new_key, previous.sign(cls._message(previous.public, new_key)))

    def to_bytes(self) -> bytes:
        return self.endorser.raw + self.new_key.raw + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> Endorsement:
        """Decode (not verify) an endorsement; `TrustError` unless it is `ENDORSEMENT_SIZE` bytes."""
        if not isinstance(data, bytes) or len(data) != ENDORSEMENT_SIZE:
            raise TrustError(f"endorsement: expected {ENDORSEMENT_SIZE} bytes, got "
                             f"{len(data) if isinstance(data, bytes) else type(data).__name__}")
        return cls(VerifyKey(data[:PUBLIC_KEY_SIZE]), VerifyKey(data[PUBLIC_KEY_SIZE:2 * PUBLIC_KEY_SIZE]),
                   data[2 * PUBLIC_KEY_SIZE:])

    def verify(self, trusted: VerifyKey) -> None:
        """`TrustError` unless `trusted` made this endorsement (another endorser, or a signature
        that does not verify, is refused alike: only the trusted key can move a gateway on)."""
        if self.endorser != trusted:
            raise TrustError(f"endorsement: by key {self.endorser.fingerprint}, not by the trusted key "
                             f"{trusted.fingerprint}")
        try:
            trusted.verify(self.signature, self._message(self.endorser, self.new_key))
        except TrustError:
            raise TrustError(f"endorsement: does not verify under the trusted key {trusted.fingerprint}") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Endorsement) and other.to_bytes() == self.to_bytes()

    def __hash__(self) -> int:
        return hash(self.to_bytes())

    def __repr__(self) -> str:
        return f"Endorsement({self.endorser.fingerprint} -> {self.new_key.fingerprint})"


class GatewayKey:
    """A gateway's own X25519 key pair: job keys are sealed to its public half."""

    __slots__ = ("_key", "public")

    def __init__(self, key: X25519PrivateKey) -> None:
        self._key = key
        self.public = key.public_key().public_bytes(_RAW, _RAW_PUB)

    @classmethod
    def generate(cls) -> GatewayKey:
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_bytes(cls, raw: bytes) -> GatewayKey:
        if not isinstance(raw, bytes) or len(raw) != 32:
            raise TrustError("X25519 private key must be 32 bytes")
        return cls(X25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        return self._key.private_bytes(_RAW, _RAW_PRIV, _NO_ENC)

    def open_job_key(self, sealed: bytes, aad: bytes) -> bytes:
        """The job key `seal_job_key` sealed to this gateway; `TrustError` if it was sealed to
        another key or for another job (the associated data differ) or was changed."""
        if len(sealed) != SEALED_KEY_SIZE:
            raise TrustError(f"sealed job key: expected {SEALED_KEY_SIZE} bytes, got {len(sealed)}")
        ephemeral = sealed[:PUBLIC_KEY_SIZE]
        try:
            shared = self._key.exchange(X25519PublicKey.from_public_bytes(ephemeral))
        except ValueError:  # a low-order point: the all-zero shared secret is refused
            raise TrustError("sealed job key: not sealed to a valid key") from None
        try:
            return AESGCM(_seal_key(shared, ephemeral, self.public)).decrypt(_NONCE, sealed[PUBLIC_KEY_SIZE:], aad)
        except InvalidTag:
            raise TrustError("sealed job key: does not open with this gateway's key (sealed to another "
                             "key, for another job, or changed)") from None

    def __repr__(self) -> str:
        return f"GatewayKey(public={self.public.hex()})"


def _seal_key(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=ephemeral + recipient, info=_SEAL_INFO).derive(shared)


def seal_job_key(gateway_public: bytes, job_key: bytes, aad: bytes) -> bytes:
    """`job_key` encrypted to the gateway whose X25519 public key is `gateway_public`."""
    if not isinstance(gateway_public, bytes) or len(gateway_public) != PUBLIC_KEY_SIZE:
        raise TrustError(f"gateway public key must be {PUBLIC_KEY_SIZE} bytes")
    if not isinstance(job_key, bytes) or len(job_key) != KEY_SIZE:
        raise TrustError(f"job key must be {KEY_SIZE} bytes")
    ephemeral = X25519PrivateKey.generate()
    eph_pub = ephemeral.public_key().public_bytes(_RAW, _RAW_PUB)
    try:
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(gateway_public))
    except ValueError:
        raise TrustError("gateway public key: not a usable X25519 key") from None
    return eph_pub + AESGCM(_seal_key(shared, eph_pub, gateway_public)).encrypt(_NONCE, job_key, aad)
