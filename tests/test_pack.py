"""render.pack: framebuffer and plane layouts, payload choice, changed regions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_proto.image import (
    ImageFormat,
    Region,
    apply_region,
    compress,
    extract_region,
    image_hash,
    row_stride,
)
from firmware_proto.models import MODELS, LabelModel
from render.pack import (
    PackError,
    Payload,
    decode_payload,
    diff_region,
    encode_payload,
    framebuffer_size,
    from_framebuffer,
    from_planes,
    to_framebuffer,
    to_framebuffers,
    to_planes,
)
from render.palette import indices_for

MODEL_NAMES = sorted(MODELS)
TINY_BWRY = LabelModel("tiny-bwry", 0xF1, "0", 3, 2, "bwry", 0, 2, False)
TINY_BWRY_90 = LabelModel("tiny-bwry-90", 0xF2, "0", 3, 2, "bwry", 90, 2, False)
TINY_BW = LabelModel("tiny-bw", 0xF3, "0", 10, 1, "bw", 0, 1, False)
TINY_BWR_270 = LabelModel("tiny-bwr-270", 0xF4, "0", 5, 3, "bwr", 270, 2, False)
TINY_IMAGE = np.array([[0, 1, 2], [3, 2, 1]], dtype=np.uint8)


def random_indices(model: LabelModel, seed: int, batch: int | None = None) -> np.ndarray:
    inks = np.array(indices_for(model.colours), dtype=np.uint8)
    shape = (model.height, model.width) if batch is None else (batch, model.height, model.width)
    return np.random.default_rng(seed).choice(inks, shape)


# --- fixed vectors ---------------------------------------------------------------------------


def test_tiny_bwry_vector() -> None:
    # row 0: 00 01 10 + pad 00 -> 0x18; row 1: 11 10 01 + pad -> 0xE4
    assert to_framebuffer(TINY_IMAGE, TINY_BWRY) == b"\x18\xe4"


def test_tiny_bwry_rotated_clockwise_vector() -> None:
    # turned 90 degrees clockwise the panel rows are [3, 0], [2, 1], [1, 2]
    assert to_framebuffer(TINY_IMAGE, TINY_BWRY_90) == b"\xc0\x90\x60"
    assert (from_framebuffer(b"\xc0\x90\x60", TINY_BWRY_90) == TINY_IMAGE).all()


def test_tiny_bw_vector_one_bit_white() -> None:
    image = np.array([[1, 0, 1, 1, 0, 0, 0, 0, 1, 1]], dtype=np.uint8)
    assert to_framebuffer(image, TINY_BW) == b"\xb0\xc0"


def test_tiny_planes_vector() -> None:
    bw, colour = to_planes(TINY_IMAGE, TINY_BWRY)
    # light (white or yellow): 011 / 011; colour (yellow or red): 001 / 110
    assert bw == b"\x60\x60"
    assert colour == b"\x20\xc0"


def test_real_model_orientation() -> None:
    """2.9" panel is mounted at 90 degrees: reading pixel (0, 0) is the end of panel row 0."""
    model = MODELS["2.9-bwry"]
    image = np.ones((model.height, model.width), dtype=np.uint8)
    image[0, 0] = 0
    fb = to_framebuffer(image, model)
    assert len(fb) == 32 * 296
    assert fb[31] == 0x54  # pixels 124..127 of row 0: white, white, white, black
    assert fb[:31] == b"\x55" * 31 and fb[32:] == b"\x55" * (len(fb) - 32)


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_framebuffer_round_trip_every_model(name: str, seed: int) -> None:
    model = MODELS[name]
    image = random_indices(model, seed)
    fb = to_framebuffer(image, model)
    assert len(fb) == framebuffer_size(model) == row_stride(model) * model.panel_size[1]
    assert (from_framebuffer(fb, model) == image).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_planes_round_trip_every_model(name: str, seed: int) -> None:
    model = MODELS[name]
    image = random_indices(model, seed)
    bw, colour = to_planes(image, model)
    assert len(bw) == len(colour) == (model.panel_size[0] + 7) // 8 * model.panel_size[1]
    if model.colours == "bw":
        assert colour == bytes(len(colour))
    assert (from_planes(bw, colour, model) == image).all()


@pytest.mark.parametrize("model", [TINY_BWRY, TINY_BWRY_90, TINY_BW, TINY_BWR_270], ids=lambda m: m.name)
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_round_trips_tiny_models(model: LabelModel, seed: int) -> None:
    image = random_indices(model, seed)
    assert (from_framebuffer(to_framebuffer(image, model), model) == image).all()
    assert (from_planes(*to_planes(image, model), model) == image).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_batch_equals_single(name: str) -> None:
    model = MODELS[name]
    batch = random_indices(model, 7, batch=3)
    assert to_framebuffers(batch, model) == [to_framebuffer(img, model) for img in batch]


# --- payload ---------------------------------------------------------------------------------


def test_payload_chooses_deflate_for_flat_image() -> None:
    model = MODELS["4.2-bwry"]
    fb = to_framebuffer(np.ones((model.height, model.width), dtype=np.uint8), model)
    p = encode_payload(fb)
    assert p.format is not ImageFormat.RAW
    assert len(p.data) < len(fb) // 50
    assert p.hash == image_hash(fb) and p.raw_size == len(fb)
    assert decode_payload(p, model) == fb


def test_payload_keeps_raw_for_noise() -> None:
    model = MODELS["2.9-bwry"]
    fb = np.random.default_rng(1).integers(0, 256, framebuffer_size(model), dtype=np.uint8).tobytes()
    p = encode_payload(fb)
    assert p.format is ImageFormat.RAW and p.data == fb
    assert decode_payload(p, model) == fb


@pytest.mark.parametrize("name", MODEL_NAMES)
@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), flat=st.booleans())
def test_payload_round_trip_and_smallest(name: str, seed: int, flat: bool) -> None:
    model = MODELS[name]
    image = random_indices(model, seed)
    if flat:
        image[: model.height // 2] = 1
    fb = to_framebuffer(image, model)
    p = encode_payload(fb)
    sizes = {fmt: len(compress(fmt, fb)) for fmt in ImageFormat}
    assert len(p.data) == min(sizes.values())
    assert p.format is min(sizes, key=lambda fmt: (sizes[fmt], fmt))
    assert decode_payload(p, model) == fb


def test_payload_rejects_wrong_size_corruption_and_hash() -> None:
    model = MODELS["1.54-bw"]
    fb = bytes(framebuffer_size(model))
    p = encode_payload(fb)
    with pytest.raises(PackError, match="raw_size"):
        decode_payload(Payload(p.format, p.data, p.hash, p.raw_size + 1), model)
    with pytest.raises(PackError, match="hash"):
        decode_payload(Payload(p.format, p.data, b"\x00" * 8, p.raw_size), model)
    with pytest.raises(PackError):
        decode_payload(Payload(ImageFormat.DEFLATE, b"\xff\xff\xff", p.hash, p.raw_size), model)
    with pytest.raises(PackError):
        decode_payload(Payload(ImageFormat.RAW, fb[:-1], p.hash, p.raw_size), model)
    with pytest.raises(PackError, match="bytes"):
        encode_payload("not bytes")  # type: ignore[arg-type]


# --- diff_region -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_diff_region_covers_exactly_the_changes(name: str, data: st.DataObject) -> None:
    model = MODELS[name]
    size = framebuffer_size(model)
    stride = row_stride(model)
    old = bytearray(np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).integers(0, 256, size, dtype=np.uint8).tobytes())
    positions = data.draw(st.lists(st.integers(0, size - 1), min_size=0, max_size=6, unique=True))
    new = bytearray(old)
    for pos in positions:
        new[pos] ^= data.draw(st.integers(1, 255))
    region = diff_region(bytes(old), bytes(new), model)
    if not positions:
        assert region is None
        return
    assert region is not None
    region.check(model)
    start, count = region.byte_span(model)
    rows = [pos // stride for pos in positions]
    cols = [pos % stride for pos in positions]
    assert region.y == min(rows) and region.y + region.h - 1 == max(rows)
    assert start == min(cols) and start + count - 1 == max(cols)
    assert apply_region(bytes(old), region, extract_region(bytes(new), region, model), model) == bytes(new)


def test_diff_region_fixed_example() -> None:
    model = MODELS["4.2-bwry"]  # 400 x 300, 100 bytes a row, 4 pixels a byte
    old = bytes(framebuffer_size(model))
    new = bytearray(old)
    new[10 * 100 + 5] = 1
    new[12 * 100 + 7] = 1
    assert diff_region(old, bytes(new), model) == Region(x=20, y=10, w=12, h=3)
    assert diff_region(old, old, model) is None


# --- bad input -------------------------------------------------------------------------------


def test_bad_indices() -> None:
    model = MODELS["2.13-bwr"]
    good = random_indices(model, 0)
    with pytest.raises(PackError, match=r"shape"):
        to_framebuffer(good.T, model)
    with pytest.raises(PackError, match="dtype"):
        to_framebuffer(good.astype(np.float32), model)
    bad = good.copy()
    bad[3, 4] = 2  # yellow on a black/white/red panel
    with pytest.raises(PackError, match="index 2"):
        to_framebuffer(bad, model)
    with pytest.raises(PackError, match="index 7"):
        to_planes(np.full_like(good, 7), model)
    with pytest.raises(PackError, match="numpy array"):
        to_framebuffer(good.tolist(), model)
    with pytest.raises(PackError, match="shape"):
        to_framebuffers(good, model)
    with pytest.raises(PackError, match="1 for 1.54-bw|bytes, expected"):
        from_framebuffer(b"\x00", MODELS["1.54-bw"])


def test_bad_framebuffer_and_planes() -> None:
    model = MODELS["2.13-bwr"]
    size = framebuffer_size(model)
    with pytest.raises(PackError, match=f"expected {size}"):
        from_framebuffer(bytes(size + 1), model)
    with pytest.raises(PackError, match="index 2"):
        from_framebuffer(b"\x80" + bytes(size - 1), model)  # first pixel 10 = yellow
    plane = (model.panel_size[0] + 7) // 8 * model.panel_size[1]
    with pytest.raises(PackError, match="colour plane"):
        from_planes(bytes(plane), bytes(plane - 1), model)
    with pytest.raises(PackError, match="index 2"):  # light + colour = yellow
        from_planes(b"\x80" + bytes(plane - 1), b"\x80" + bytes(plane - 1), model)
    bw = MODELS["1.54-bw"]
    bw_plane = 25 * 200
    with pytest.raises(PackError, match="index 3"):  # colour bit on a black/white panel
        from_planes(bytes(bw_plane), b"\x80" + bytes(bw_plane - 1), bw)
    with pytest.raises(PackError, match="old framebuffer"):
        diff_region(b"", bytes(size), model)
