"""Properties of the fold and the projection over small random event streams.

Events range over 3 skus, 3 locations (STORE-9 is in no channel's network), 3 bins, two
statuses, a few reservation ids shared by creations, releases and shipments, and a few
inbound ids updated with varying occurred_at. The oracle is tests.reference.ReferenceModel,
written from the contract alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from atp_service.config import Settings, parse_config
from atp_service.model import projector_for
from streams.events import (
    AnyEvent,
    BinCount,
    BinMovement,
    Inbound,
    ReservationCreated,
    ReservationReleased,
    SnapshotBin,
    StockSnapshot,
    decode,
    encode,
)
from streams.fold import fold
from streams.projector import Projector
from streams.state import SkuState, to_us
from tests.conftest import config_text
from tests.reference import ReferenceModel

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
FOLD_NOW_US = to_us(T0 + timedelta(hours=1))
WINDOW_US = 7 * 86_400_000_000
BINS = ("A", "B", "C")
INBOUND_IDS = ("PO-1", "PO-2", "PO-3")
CHANNELS = frozenset({"web", "marketplace"})

SETTINGS: Settings = parse_config(config_text())  # the same channels as `test_settings`
PROJECTOR: Projector = projector_for(SETTINGS)

# -- strategies ---------------------------------------------------------------------------

offsets = st.sampled_from(
    [UTC, timezone(timedelta(hours=2)), timezone(-timedelta(hours=5, minutes=30))]
)


@st.composite
def instants(draw: st.DrawFn, max_minutes: int = 300) -> datetime:
    minute = draw(st.integers(0, max_minutes))
    return (T0 + timedelta(minutes=minute)).astimezone(draw(offsets))


# Skewed choices, so that events often meet on the same sku, bin, status and reservation.
sides = st.tuples(st.sampled_from(BINS), st.sampled_from(["available", "available", "damaged"]))
skus = st.sampled_from(["SKU-1", "SKU-1", "SKU-1", "SKU-2", "SKU-3"])
locations = st.sampled_from(["DC-EAST", "DC-EAST", "DC-EAST", "DC-WEST", "STORE-9"])
rids = st.sampled_from(["R-1", "R-1", "R-2", "R-3"])


@st.composite
def movements(draw: st.DrawFn) -> dict[str, Any]:
    shape = draw(st.sampled_from(["receipt", "shipment", "move"]))
    src = draw(sides) if shape in ("shipment", "move") else (None, None)
    dst = draw(sides) if shape in ("receipt", "move") else (None, None)
    # A reservation_id on a receipt or a move must not consume anything: keep some.
    rid = draw(st.none() | rids) if shape == "shipment" else draw(st.none() | st.just("R-1"))
    return {
        "cls": BinMovement,
        "occurred_at": draw(instants()),
        "sku": draw(skus),
        "location": draw(locations),
        "quantity": draw(st.integers(1, 12)),
        "from_bin": src[0],
        "from_status": src[1],
        "to_bin": dst[0],
        "to_status": dst[1],
        "reservation_id": rid,
    }


@st.composite
def counts(draw: st.DrawFn) -> dict[str, Any]:
    bin_, status = draw(sides)
    return {
        "cls": BinCount,
        "occurred_at": draw(instants()),
        "sku": draw(skus),
        "location": draw(locations),
        "bin": bin_,
        "status": status,
        "quantity": draw(st.integers(0, 15)),
    }


@st.composite
def snapshots(draw: st.DrawFn) -> dict[str, Any]:
    listed = draw(st.lists(sides, max_size=4, unique=True))
    return {
        "cls": StockSnapshot,
        "occurred_at": draw(instants()),
        "sku": draw(skus),
        "location": draw(locations),
        "bins": [SnapshotBin(b, s, draw(st.integers(0, 15))) for b, s in listed],
    }


@st.composite
def creations(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "cls": ReservationCreated,
        "occurred_at": draw(instants()),
        "sku": draw(skus),
        "reservation_id": draw(rids),
        "channel": draw(st.sampled_from(sorted(CHANNELS))),
        "location": draw(locations),
        "quantity": draw(st.integers(0, 8)),
        "expires_at": draw(st.none() | instants(max_minutes=60 * 30)),
    }


@st.composite
def releases(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "cls": ReservationReleased,
        "occurred_at": draw(instants()),
        "sku": draw(skus),
        "reservation_id": draw(rids),
    }


@st.composite
def inbounds(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "cls": Inbound,
        "occurred_at": draw(instants()),
        "sku": draw(skus),
        "inbound_id": draw(st.sampled_from(INBOUND_IDS)),
        "location": draw(locations),
        "quantity": draw(st.sampled_from([0, 1, 5, 20])),
        "eta": T0.date() + timedelta(days=draw(st.integers(-3, 18))),
    }


# Movements and reservation events are drawn more often: they interact the most.
any_body = st.one_of(
    movements(),
    movements(),
    counts(),
    snapshots(),
    creations(),
    creations(),
    releases(),
    inbounds(),
)


def _materialize(bodies: Sequence[dict[str, Any]]) -> list[AnyEvent]:
    out: list[AnyEvent] = []
    for i, body in enumerate(bodies):
        fields = dict(body)
        cls = fields.pop("cls")
        out.append(cls(event_id=f"e-{i}", **fields))
    return out


@st.composite
def event_lists(draw: st.DrawFn, max_size: int = 40) -> list[AnyEvent]:
    # A drawn size rather than st.lists' own: its lists are mostly very short.
    size = draw(st.integers(0, max_size))
    return _materialize(draw(st.lists(any_body, min_size=size, max_size=size)))


nows = st.integers(0, 4 * 24 * 60).map(lambda m: to_us(T0 + timedelta(minutes=m)))

# -- helpers ------------------------------------------------------------------------------


def run(
    events: Sequence[AnyEvent],
    states: Mapping[str, SkuState] | None = None,
    seen: frozenset[str] = frozenset(),
) -> Any:
    return fold(states or {}, events, seen=seen, now_us=FOLD_NOW_US, window_us=WINDOW_US)


def canonical(states: Mapping[str, SkuState]) -> dict[str, tuple[Any, ...]]:
    return {
        sku: (
            sorted(msgspec.structs.astuple(b) for b in s.bins),
            sorted(msgspec.structs.astuple(r) for r in s.reservations),
            sorted(msgspec.structs.astuple(i) for i in s.inbound),
            s.safety_stock,
            s.last_ats,
        )
        for sku, s in states.items()
    }


def projection(states: Mapping[str, SkuState], now_us: int) -> dict[tuple[str, str], Any]:
    """(channel, sku) -> the document without as_of, for every sku of ``states``."""
    rendered = PROJECTOR.render(list(states.values()), now_us)
    out = {}
    for sku, per_channel in rendered.documents.items():
        for channel, raw in per_channel.items():
            doc = msgspec.json.decode(raw)
            doc.pop("as_of")
            out[(channel, sku)] = doc
    return out


def oracle(events: Sequence[AnyEvent]) -> ReferenceModel:
    model = ReferenceModel(SETTINGS)
    for event in events:
        model.apply(json.loads(encode(event)))  # as produced to Kafka
    return model


TOPIC = {
    BinMovement: "movements",
    BinCount: "movements",
    StockSnapshot: "movements",
    ReservationCreated: "reservations",
    ReservationReleased: "reservations",
    Inbound: "inbound",
}

# -- (a) duplicates -----------------------------------------------------------------------


@given(events=event_lists(), data=st.data())
def test_duplicates_inserted_anywhere_after_the_original_change_nothing(
    events: list[AnyEvent], data: st.DataObject
) -> None:
    with_dups = list(events)
    n_dups = data.draw(st.integers(0, 8)) if events else 0
    for _ in range(n_dups):
        original = data.draw(st.integers(0, len(events) - 1))
        position = with_dups.index(events[original])
        copy = msgspec.structs.replace(events[original])
        with_dups.insert(data.draw(st.integers(position + 1, len(with_dups))), copy)
    plain, duplicated = run(events), run(with_dups)
    assert canonical(duplicated.states) == canonical(plain.states)
    assert duplicated.applied == plain.applied
    assert len(duplicated.duplicates) == n_dups


# -- (b) batch splits ---------------------------------------------------------------------


@given(events=event_lists(), data=st.data())
def test_folding_in_consecutive_batches_equals_one_batch(
    events: list[AnyEvent], data: st.DataObject
) -> None:
    # Replay a few events (redelivery): some land in a later batch than their original.
    replays = data.draw(st.lists(st.sampled_from(events), max_size=5)) if events else []
    stream = events + replays
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=5)))
    whole = run(stream)
    states: dict[str, SkuState] = {}
    seen: frozenset[str] = frozenset()
    applied: list[AnyEvent] = []
    n_duplicates = 0
    for start, stop in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        part = run(stream[start:stop], states, seen)
        states = {**states, **part.states}
        seen = seen | {e.event_id for e in part.applied}
        applied += part.applied
        n_duplicates += len(part.duplicates)
    assert canonical(states) == canonical(whole.states)
    assert applied == whole.applied
    assert seen == {e.event_id for e in whole.applied}
    assert n_duplicates == len(whole.duplicates) == len(replays)


# -- (c) the projection equals the reference model ----------------------------------------


@given(events=event_lists(), now_us=nows)
def test_the_projection_of_the_fold_equals_the_reference_model(
    events: list[AnyEvent], now_us: int
) -> None:
    states = run(events).states
    model = oracle(events)
    assert set(states) == set(model.skus)
    assert projection(states, now_us) == model.expected(now_us)


@given(events=event_lists(max_size=15), now_us=nows)
def test_the_reference_accepts_structs_and_dicts_alike(events: list[AnyEvent], now_us: int) -> None:
    by_struct, by_dict = ReferenceModel(SETTINGS), ReferenceModel(SETTINGS)
    outcomes = by_struct.apply_all(events + events[:3])
    assert outcomes == by_dict.apply_all([json.loads(encode(e)) for e in events + events[:3]])
    assert outcomes == ["applied"] * len(events) + ["duplicate"] * len(events[:3])
    assert by_struct.expected(now_us) == by_dict.expected(now_us)


# -- (d) invariants of the projection -----------------------------------------------------


@given(events=event_lists(), now_us=nows)
def test_available_to_sell_is_never_negative_and_atp_never_decreases(
    events: list[AnyEvent], now_us: int
) -> None:
    for (_channel, _sku), doc in projection(run(events).states, now_us).items():
        ats = doc["available_to_sell"]
        assert ats >= 0
        assert ats == max(0, doc["on_hand"] - doc["reserved"] - doc["safety_stock"])
        quantities = [e["quantity"] for e in doc["atp"]]
        dates = [e["date"] for e in doc["atp"]]
        assert dates == sorted(set(dates))
        assert all(q >= ats for q in quantities)
        assert quantities == sorted(quantities)


# -- (e) order across topics --------------------------------------------------------------


@given(events=event_lists(), data=st.data(), now_us=nows)
def test_any_interleaving_of_the_topics_gives_the_same_projection(
    events: list[AnyEvent], data: st.DataObject, now_us: int
) -> None:
    per_topic: dict[str, list[AnyEvent]] = {"movements": [], "reservations": [], "inbound": []}
    for event in events:
        per_topic[TOPIC[type(event)]].append(event)
    labels = data.draw(st.permutations([TOPIC[type(e)] for e in events]))
    cursors = dict.fromkeys(per_topic, 0)
    interleaved = []
    for label in labels:
        interleaved.append(per_topic[label][cursors[label]])
        cursors[label] += 1
    expected = projection(run(events).states, now_us)
    assert projection(run(interleaved).states, now_us) == expected
    # The extreme orders: every shipment before every reservation event, and the reverse.
    shipments_first = per_topic["movements"] + per_topic["reservations"] + per_topic["inbound"]
    creations_first = per_topic["reservations"] + per_topic["inbound"] + per_topic["movements"]
    assert projection(run(shipments_first).states, now_us) == expected
    assert projection(run(creations_first).states, now_us) == expected


@given(events=event_lists(), data=st.data(), now_us=nows)
def test_moving_a_release_or_a_shipment_before_its_reservation_gives_the_same_projection(
    events: list[AnyEvent], data: st.DataObject, now_us: int
) -> None:
    # A release or a shipment (to side null, with a reservation_id) that comes after the
    # reservation_created it names.
    movable = []
    for i, e in enumerate(events):
        consumes = isinstance(e, BinMovement) and e.to_bin is None and e.reservation_id
        if not (isinstance(e, ReservationReleased) or consumes):
            continue
        created = [
            j
            for j, c in enumerate(events[:i])
            if isinstance(c, ReservationCreated)
            and (c.sku, c.reservation_id) == (e.sku, e.reservation_id)
        ]
        if not created:
            continue
        lowest = 0
        if isinstance(e, BinMovement):
            # It stays after the counts of its bin and the snapshots of its location: they
            # are the movements-topic events a movement does not commute with.
            its_bin = (e.sku, e.location, e.from_bin, e.from_status)
            lowest = 1 + max(
                (
                    j
                    for j, c in enumerate(events[:i])
                    if (isinstance(c, BinCount) and (c.sku, c.location, c.bin, c.status) == its_bin)
                    or (isinstance(c, StockSnapshot) and (c.sku, c.location) == its_bin[:2])
                ),
                default=-1,
            )
        if lowest <= created[0]:
            movable.append((i, lowest, created[0]))
    if not movable:
        return
    i, lowest, first_creation = data.draw(st.sampled_from(movable))
    target = data.draw(st.integers(lowest, first_creation))
    moved = events[:i] + events[i + 1 :]
    moved.insert(target, events[i])
    assert projection(run(moved).states, now_us) == projection(run(events).states, now_us)


# -- (f) encode / decode ------------------------------------------------------------------


@st.composite
def fine_instants(draw: st.DrawFn) -> datetime:
    micros = draw(st.integers(0, 10**12))
    return (T0 + timedelta(microseconds=micros)).astimezone(draw(offsets))


@st.composite
def any_event(draw: st.DrawFn) -> AnyEvent:
    body = dict(draw(any_body))
    cls = body.pop("cls")
    body["occurred_at"] = draw(fine_instants())
    if cls is ReservationCreated and body["expires_at"] is not None:
        body["expires_at"] = draw(fine_instants())
    event_id = draw(
        st.text(
            st.characters(
                min_codepoint=0x20, blacklist_categories=("Cs",), blacklist_characters="\x7f"
            ),
            min_size=1,
            max_size=20,
        )
    )
    return cls(event_id=event_id, **body)


@pytest.mark.parametrize(
    "cls", [BinMovement, BinCount, ReservationCreated, ReservationReleased, Inbound]
)
@given(data=st.data())
def test_every_event_type_round_trips_through_encode_and_decode(
    cls: type, data: st.DataObject
) -> None:
    event = data.draw(any_event().filter(lambda e: isinstance(e, cls)))
    assert decode(encode(event), CHANNELS) == event
    as_produced = json.dumps(msgspec.to_builtins(event)).encode()
    assert decode(as_produced, CHANNELS) == event
    assert ReferenceModel(SETTINGS).parse(event) == ReferenceModel(SETTINGS).parse(
        json.loads(as_produced)
    )


# -- next_change_us -----------------------------------------------------------------------


@given(events=event_lists(), now_us=nows, data=st.data())
def test_nothing_changes_before_the_announced_next_change(
    events: list[AnyEvent], now_us: int, data: st.DataObject
) -> None:
    states = run(events).states
    model = oracle(events)
    rendered = PROJECTOR.render(list(states.values()), now_us)
    for sku in states:
        now_doc = model.expected(now_us, [sku])
        change = rendered.next_change_us.get(sku)
        if change is None:
            later = now_us + 40 * 86_400_000_000
            assert model.expected(later, [sku]) == now_doc, "a change was never announced"
            continue
        assert change > now_us
        probe = data.draw(st.integers(now_us, change - 1))
        for t in (probe, change - 1):
            assert model.expected(t, [sku]) == now_doc, "a change came before next_change_us"
