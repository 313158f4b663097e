"""Simulated labels keep their keys, counters and screens in a state file across restarts,
and their counters never go backwards, not even after a crash."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from eslserver.cli import app
from eslserver.gateway.conversation import Conversation, pair_label, push_image
from firmware_proto.frames import Checkin
from firmware_proto.gateway import GatewaySession
from firmware_proto.models import get_model
from firmware_proto.transfer import framebuffer_size
from simulator.label import SimLabel, factory_key
from simulator.links import MemoryLink
from simulator.screen import demo_indices, pack_indices
from simulator.state import LabelState, StateFileError
from simulator.store import SimStore, StoreConfig, label_address

SEED = 3
ADDRESS = label_address(1)
MODEL = "1.54-bw"


def config(path: Path, **kwargs: object) -> StoreConfig:
    args: dict[str, object] = {"labels": 1, "models": (MODEL,), "seed": SEED, "always_listening": True,
                               "wake_interval_s": 0.0, "state_file": path}
    args.update(kwargs)
    return StoreConfig(**args)  # type: ignore[arg-type]


def journal(path: Path) -> Path:
    return path.with_name(path.name + ".log")


class Shelf:
    """One simulated label and the gateway (server) session that talks to it."""

    def __init__(self) -> None:
        self.gateway = GatewaySession(ADDRESS)
        self.checkins: list[bytes] = []
        self.store: SimStore | None = None

    @property
    def label(self) -> SimLabel:
        assert self.store is not None
        return self.store.label(ADDRESS)

    async def power_on(self, path: Path, reserve: int | None = None) -> None:
        """Start a store on `path`; the label's power-on check-in must convince the gateway."""
        self.store = SimStore(config(path))
        assert self.store.state is not None
        if reserve is not None:
            self.store.state.reserve = reserve
        self.store.add_checkin_listener(lambda address, frame, rssi: self.checkins.append(frame))
        await self.store.start()
        self.open(await self.next_checkin())

    async def next_checkin(self) -> bytes:
        for _ in range(500):
            if self.checkins:
                return self.checkins.pop(0)
            await asyncio.sleep(0.002)
        raise AssertionError("the label did not check in")

    def open(self, frame: bytes) -> None:
        """The gateway verifies a frame of the label (AuthError on a reused counter)."""
        opened = self.gateway.open(frame)
        assert not isinstance(opened, Checkin) or self.gateway.key is None or opened.auth is not None

    def send(self, frame: bytes) -> list[bytes]:
        assert self.store is not None
        return self.store.hand_to_label(self.label, frame)


@settings(max_examples=30, deadline=None)
@given(actions=st.lists(st.sampled_from(["ping", "wake", "tick", "crash", "restart"]), min_size=1, max_size=20),
       reserve=st.sampled_from([1, 2, 5, 256]))
def test_counters_never_go_backwards_across_restarts_and_crashes(actions: list[str], reserve: int) -> None:
    async def scenario(directory: Path) -> None:
        shelf = Shelf()
        path = directory / "state-0.json"
        await shelf.power_on(path, reserve)
        for reply in shelf.send(shelf.gateway.pair(factory_key(SEED, ADDRESS))):
            shelf.open(reply)
        sent_to_label: list[bytes] = []
        used_tx, accepted_rx = shelf.label.flash.tx_counter, shelf.label.flash.rx.highest
        for n, action in enumerate(actions):
            store = shelf.store
            assert store is not None
            if action == "ping":
                frame = shelf.gateway.command("ping")
                sent_to_label.append(frame)
                replies = shelf.send(frame)
                assert replies, "the label refused a fresh frame"
                for reply in replies:
                    shelf.open(reply)
            elif action == "wake":
                store.wake_now(ADDRESS)
                shelf.open(await shelf.next_checkin())
            elif action == "tick":
                assert store.state is not None
                store.state.write()  # the periodic write while running
            elif action == "crash":  # the disk as it is now is all the next run gets
                path, before = directory / f"state-{n + 1}.json", path
                shutil.copyfile(before, path)
                if journal(before).exists():
                    shutil.copyfile(journal(before), journal(path))
                await store.aclose()  # (writes `before`, which nobody reads any more)
                await shelf.power_on(path, reserve)
                flash = shelf.label.flash
                assert flash.label_key == shelf.gateway.key
                assert flash.tx_counter >= used_tx and flash.rx.highest >= accepted_rx
                for old in sent_to_label[-3:]:
                    assert shelf.send(old) == [], "a frame accepted before the crash was accepted again"
            else:  # a clean stop and start: everything exactly as it was
                before_flash = shelf.label.flash
                state = (before_flash.label_key, before_flash.tx_counter, before_flash.rx.highest,
                         before_flash.rx.mask, before_flash.framebuffer)
                await store.aclose()
                await shelf.power_on(path, reserve)
                flash = shelf.label.flash
                assert (flash.label_key, flash.tx_counter - 1, flash.rx.highest, flash.rx.mask,
                        flash.framebuffer) == state  # (-1: the power-on check-in used one)
            used_tx = max(used_tx, shelf.label.flash.tx_counter)
            accepted_rx = max(accepted_rx, shelf.label.flash.rx.highest)
        assert shelf.store is not None
        await shelf.store.aclose()

    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(scenario(Path(directory)))


async def test_screen_and_key_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    store = SimStore(config(path))
    async with store:
        link = MemoryLink(store, ADDRESS)
        await link.connect()
        conv = Conversation(link, GatewaySession(ADDRESS))
        await pair_label(conv, factory_key(SEED, ADDRESS), bytes(range(16)))
        label = store.label(ADDRESS)
        image = pack_indices(demo_indices(label.model, 3), label.model)
        assert (await push_image(conv, image)).done
        shown = label.displayed_hash
    again = SimStore(config(path))
    label = again.label(ADDRESS)
    assert label.paired and label.flash.label_key == bytes(range(16))
    assert label.framebuffer == image and label.displayed_hash == shown
    assert label.reboots == 0


@settings(max_examples=40, deadline=None)
@given(key=st.none() | st.binary(min_size=16, max_size=16), esl_id=st.integers(0, 255),
       counters=st.tuples(*[st.integers(0, 0xFFFFFFFF)] * 3), masks=st.tuples(*[st.integers(0, 2**64 - 1)] * 2),
       pattern=st.binary(min_size=1, max_size=32))
def test_label_state_round_trips(key: bytes | None, esl_id: int, counters: tuple[int, int, int],
                                 masks: tuple[int, int], pattern: bytes) -> None:
    size = framebuffer_size(get_model(MODEL))
    state = LabelState(model=MODEL, label_key=key, esl_id=esl_id, tx_counter=counters[0], rx_highest=counters[1],
                       rx_mask=masks[0], factory_rx_highest=counters[2], factory_rx_mask=masks[1],
                       framebuffer=(pattern * (size // len(pattern) + 1))[:size])
    assert LabelState.from_json(ADDRESS, json.loads(json.dumps(state.to_json()))) == state


def written(path: Path) -> dict[str, object]:
    store = SimStore(config(path))
    assert store.state is not None
    store.state.write(exact=True)
    return json.loads(path.read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize(("field", "value", "message"), [
    ("tx_counter", -1, "tx_counter must be an integer in 0..4294967295, got -1"),
    ("label_key", "abc", "label_key must be null or 32 hex digits, got 'abc'"),
    ("screen", "AAAA", "screen must be base64 of a deflated framebuffer"),
    ("screen_hash", "00", "screen_hash must be the screen's hash"),
    ("model", "9.9-nope", "model must be a known label model, got '9.9-nope'"),
])
def test_a_bad_entry_is_refused_naming_label_field_and_value(tmp_path: Path, field: str, value: object,
                                                            message: str) -> None:
    path = tmp_path / "labels.json"
    doc = written(path)
    doc["labels"][ADDRESS][field] = value  # type: ignore[index]
    path.write_text(json.dumps(doc))
    with pytest.raises(StateFileError, match=f"{path}: label {ADDRESS}: {message}"):
        SimStore(config(path))


def test_another_seed_or_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    written(path)
    with pytest.raises(StateFileError, match=f"seed is {SEED} there, 4 in this store"):
        SimStore(config(path, seed=4))
    with pytest.raises(StateFileError, match="model is '1.54-bw' in the state file, '2.9-bwry' in this store"):
        SimStore(config(path, models=("2.9-bwry",)))


def test_the_journal_of_this_generation_counts_and_a_torn_last_line_does_not(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    doc = written(path)
    generation = doc["generation"]
    assert isinstance(generation, int)
    entry = {k: v for k, v in doc["labels"][ADDRESS].items()  # type: ignore[index]
             if k not in ("screen", "screen_hash")}
    lines = [{**entry, "generation": generation, "address": ADDRESS, "tx_counter": 500},
             {**entry, "generation": generation - 1, "address": ADDRESS, "tx_counter": 900}]  # stale
    torn = json.dumps({**lines[0], "tx_counter": 700})[:40]
    journal(path).write_text("".join(json.dumps(line) + "\n" for line in lines) + torn)
    assert SimStore(config(path)).label(ADDRESS).flash.tx_counter == 500
    journal(path).write_text("{not json\n")
    with pytest.raises(StateFileError, match="labels.json.log line 1 is not JSON"):
        SimStore(config(path))


def test_labels_the_store_does_not_have_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    big = written(path)
    assert list(big["labels"]) == [ADDRESS]  # type: ignore[call-overload]
    two = SimStore(config(path, labels=2))
    assert two.state is not None
    two.state.write()
    small = SimStore(config(path, labels=1))  # a smaller store keeps the second label's entry
    assert small.state is not None
    small.state.write()
    assert sorted(json.loads(path.read_text())["labels"]) == [ADDRESS, label_address(2)]


def test_esl_simulate_refuses_a_bad_state_file(tmp_path: Path) -> None:
    bad = tmp_path / "labels.json"
    bad.write_text("{not json")
    result = CliRunner().invoke(app, ["simulate", "--labels", "1", "--listen", "127.0.0.1:0", "--state", str(bad)])
    assert result.exit_code == 1
    assert f"simulator state {bad}: not JSON" in result.output
