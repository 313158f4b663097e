"""The over-the-air protocol between gateway and label, sans-IO: bytes in, frames out.

Entry points: `parse_frame` (any frame, or `ProtocolError`), `LabelSession` (the label side the
simulator runs), `GatewaySession` (the gateway side of one label), `ImageSender` /
`ImageReceiver` (the transfer state machines), `plan_update` (the cheapest way to change what a
label shows), `StreamDecoder` (frames over a byte stream). /work/notes/firmware_proto_api.md
walks through them with examples.
"""

from firmware_proto.auth import (
    KEY_SIZE, Direction, FrameKey, ReplayWindow, derive_factory_key, new_label_key,
)
from firmware_proto.commands import BasicState, EslError, SensorIndex, command_spec, response_spec
from firmware_proto.envelope import (
    BudgetExhausted, CommandJob, EnvelopeError, ImageJob, JobEnvelope, JobKind, JobSession, PairJob,
    credentials, envelope_endorsement, follow_envelope, open_job_key, parse_envelope, verify_envelope,
)
from firmware_proto.errors import (
    AuthError, CommandError, FrameError, ProtocolError, TransferError,
)
from firmware_proto.frames import (
    DEFAULT_MTU, MAX_FRAME, PROTOCOL_VERSION, Auth, Checkin, CheckinFlag, ControlCommand,
    ControlResponse, Frame, FrameType, ImageOffer, ImagePart, ImageStatus, ImageStatusRequest,
    JobStatus, JobTicket, OfferFlag, PairRequest, TransferState, address_bytes, address_str, parse_frame,
)
from firmware_proto.gateway import GatewaySession, SealedSender
from firmware_proto.image import HASH_SIZE, ImageFormat, Region, image_hash
from firmware_proto.jobkeys import RESULT_OK, derive_job_key, make_ticket
from firmware_proto.label import (
    DisplayScheduled, FactoryReset, FrameRejected, ImageDisplayed, LabelEvent, LabelFlash,
    LabelSession, LedChanged, Paired, ServiceReset, TransferFailed, Unpaired, blank_framebuffer,
)
from firmware_proto.models import MODELS, LabelModel, get_model
from firmware_proto.stream import StreamDecoder, encode_stream
from firmware_proto.transfer import (
    ImageReceiver, ImageSender, ImageUpdate, TransferResult, best_payload,
    changed_region, framebuffer_size, part_size_for, plan_update,
)
from firmware_proto.trust import Endorsement, GatewayKey, SigningKey, TrustError, VerifyKey

__all__ = [
    # auth
    "KEY_SIZE", "Direction", "FrameKey", "ReplayWindow", "derive_factory_key", "new_label_key",
    # ESL command table
    "BasicState", "EslError", "SensorIndex", "command_spec", "response_spec",
    # errors
    "AuthError", "CommandError", "FrameError", "ProtocolError", "TransferError",
    # frames
    "DEFAULT_MTU", "MAX_FRAME", "PROTOCOL_VERSION", "Auth", "Checkin", "CheckinFlag",
    "ControlCommand", "ControlResponse", "Frame", "FrameType", "ImageOffer", "ImagePart",
    "ImageStatus", "ImageStatusRequest", "JobStatus", "JobTicket", "OfferFlag", "PairRequest", "TransferState",
    "address_bytes", "address_str", "parse_frame",
    # sessions
    "GatewaySession", "SealedSender", "LabelFlash", "LabelSession", "blank_framebuffer",
    "LabelEvent", "DisplayScheduled", "FactoryReset", "FrameRejected", "ImageDisplayed",
    "LedChanged", "Paired", "ServiceReset", "TransferFailed", "Unpaired",
    # images and transfer
    "HASH_SIZE", "ImageFormat", "Region", "image_hash", "ImageReceiver", "ImageSender",
    "ImageUpdate", "TransferResult", "best_payload", "changed_region",
    "framebuffer_size", "part_size_for", "plan_update",
    # job envelopes (server -> gateway)
    "BudgetExhausted", "CommandJob", "EnvelopeError", "ImageJob", "JobEnvelope", "JobKind",
    "JobSession", "PairJob", "credentials", "open_job_key", "parse_envelope", "verify_envelope",
    "envelope_endorsement", "follow_envelope",
    # job keys and trust (server -> gateway -> label)
    "RESULT_OK", "derive_job_key", "make_ticket", "GatewayKey", "SigningKey", "TrustError", "VerifyKey", "Endorsement",
    # models, streams
    "MODELS", "LabelModel", "get_model", "StreamDecoder", "encode_stream",
]
