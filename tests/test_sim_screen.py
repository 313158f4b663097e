"""Screen snapshots: framebuffer ↔ upright indices ↔ PNG in the panel's colours."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from firmware_proto.label import blank_framebuffer as label_blank
from firmware_proto.models import MODELS, LabelModel, get_model
from render.palette import PANEL_RGB, WHITE, indices_for
from simulator.screen import (
    ScreenError, _own_to_indices, blank_framebuffer, pack_indices, snapshot_png, to_indices,
    unpack_panel,
)


def random_indices(model: LabelModel, seed: int) -> np.ndarray:
    inks = np.array(indices_for(model.colours), dtype=np.uint8)
    return inks[np.random.default_rng(seed).integers(0, len(inks), size=(model.height, model.width))]


@pytest.mark.parametrize("name", list(MODELS))
@given(seed=st.integers(0, 2**32 - 1))
@settings(max_examples=10, deadline=None)
def test_pack_and_unpack_round_trip(name: str, seed: int) -> None:
    model = get_model(name)
    indices = random_indices(model, seed)
    fb = pack_indices(indices, model)
    assert np.array_equal(to_indices(fb, model), indices)
    # our own unpacking agrees with the renderer's inverse
    assert np.array_equal(_own_to_indices(fb, model), indices)


@pytest.mark.parametrize("name", list(MODELS))
def test_blank_is_white_and_shared(name: str) -> None:
    model = get_model(name)
    assert blank_framebuffer(model) is blank_framebuffer(model)
    assert blank_framebuffer(model) == label_blank(model)
    assert (unpack_panel(blank_framebuffer(model), model) == WHITE).all()


def test_snapshot_png_shows_panel_colours_upright() -> None:
    model = get_model("2.9-bwry")  # mounted at 90°: the PNG must be 296 wide, 128 high
    indices = random_indices(model, 1)
    png = Image.open(io.BytesIO(snapshot_png(pack_indices(indices, model), model)))
    assert png.size == (model.width, model.height)
    assert np.array_equal(np.asarray(png.convert("RGB")), PANEL_RGB[indices])


def test_snapshot_of_an_ink_the_panel_lacks_does_not_crash() -> None:
    model = get_model("2.13-bwr")
    fb = bytes([0xAA]) * len(blank_framebuffer(model))  # every pixel index 2 (yellow)
    assert (to_indices(fb, model) == 2).all()


def test_wrong_sizes_are_refused() -> None:
    model = get_model("1.54-bw")
    with pytest.raises(ScreenError, match="framebuffer is 3 bytes"):
        unpack_panel(b"abc", model)
    with pytest.raises(ScreenError, match="indices are"):
        pack_indices(np.zeros((3, 3), dtype=np.uint8), model)
