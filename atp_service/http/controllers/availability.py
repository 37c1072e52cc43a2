"""GET /v1/availability/{channel}/{sku} and POST /v1/availability/{channel}/query."""

from __future__ import annotations

import base64
import re
import time
from typing import Annotated, Final

import msgspec
from litestar import Controller, Response, get, post
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import Parameter

from atp_service.allocator import Allocator
from atp_service.config import Settings
from atp_service.http.auth import require
from atp_service.http.problems import problem_responses
from atp_service.http.reader import AvailabilityReader
from atp_service.http.redis_access import RedisAccess
from atp_service.http.schemas import (
    AvailabilityList,
    ChangeItem,
    ChangesPage,
    ChannelParam,
    SkuParam,
    SkuQuery,
)
from atp_service.ops.explain import ComponentFigures, ExplainedAvailability, explain
from streams.projector import Availability

# A cursor is a position in each shard's change stream of the channel (streams/shards.py),
# "~"-separated: "<entry id>.<skus of that entry already returned>". Any string of this form
# is a position the service can resume from (19 digits stay below Redis' 64-bit stream ids),
# so the document states it as a pattern. Empty, like none at all, is the start.
_POSITION: Final = r"[0-9]{1,19}-[0-9]{1,19}\.[0-9]{1,9}"
CURSOR: Final = rf"^({_POSITION}(~{_POSITION}){{0,4095}})?$"
_CURSOR: Final = re.compile(rf"^{_POSITION}(~{_POSITION})*$")
_OLD_STREAM_ID: Final = re.compile(r"^[0-9]{1,19}-[0-9]{1,19}$")


def known_channel(settings: Settings, channel: str) -> str:
    if settings.channel(channel) is None:
        raise NotFoundException(detail=f"unknown channel {channel!r}")
    return channel


class _Value(msgspec.Struct):
    sku: str
    available_to_sell: int
    as_of: str


_value_decoder: Final = msgspec.json.Decoder(_Value)
_figures: Final = msgspec.json.Decoder(Availability)


Position = tuple[str, int]  # (stream entry id, skus of that entry already returned)


def _decode_cursor(cursor: str | None, shards: int) -> list[Position | None]:
    """A position per shard's stream (None: from its start)."""
    if not cursor:
        return [None] * shards
    if _CURSOR.match(cursor):
        positions: list[Position | None] = []
        for part in cursor.split("~"):
            entry, _, done = part.partition(".")
            positions.append(None if entry == "0-0" and done == "0" else (entry, int(done)))
        # One position per shard; a cursor of a store with other shards resumes where it can.
        return (positions + [None] * shards)[:shards]
    if shards != 1:
        raise ValidationException(detail="cursor: not a cursor this service issued")
    return [_decode_issued_before(cursor)]


def _decode_issued_before(cursor: str) -> tuple[str, int]:
    """A cursor of the earlier form (base64url of "<entry>/<done>"), which sync jobs may
    still hold; the document states only the current form."""
    try:
        raw = base64.urlsafe_b64decode(cursor.encode() + b"=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise ValidationException(detail="cursor: not a cursor this service issued") from None
    entry, _, done = raw.partition("/")
    if not _OLD_STREAM_ID.match(entry) or not done.isdigit() or len(done) > 9:
        raise ValidationException(detail="cursor: not a cursor this service issued")
    return entry, int(done)


def _encode_cursor(positions: list[Position | None]) -> str:
    return "~".join(f"{p[0]}.{p[1]}" if p else "0-0.0" for p in positions)


def _entry_order(entry: bytes) -> tuple[int, int]:
    ms, _, seq = entry.partition(b"-")
    return int(ms), int(seq)


def _page(
    streams: list[list[tuple[bytes, dict[bytes, bytes]]]],
    positions: list[Position | None],
    limit: int,
) -> tuple[list[str], list[Position | None]]:
    """Up to ``limit`` skus from the shards' stream entries after their positions, oldest
    entry first across the shards, and the positions after them. Each entry lists the skus
    of one write; a position can end inside an entry."""
    merged = sorted(
        (_entry_order(entry_id), shard, entry_id, fields)
        for shard, entries in enumerate(streams)
        for entry_id, fields in entries
    )
    picked: dict[str, None] = {}
    after = list(positions)
    for _, shard, entry_id, fields in merged:
        if len(picked) >= limit:
            break
        entry = entry_id.decode()
        position = positions[shard]
        listed = fields[b"s"].decode().split("\n")
        first = position[1] if position and entry == position[0] else 0
        for index in range(first, len(listed)):
            if len(picked) >= limit:
                break
            picked.setdefault(listed[index], None)
            after[shard] = (entry, index + 1)
    return list(picked), after


class AvailabilityController(Controller):
    path = "/v1/availability/{channel:str}"
    guards = [require("availability:read")]
    tags = ["availability"]

    @get(
        "/{sku:str}",
        responses=problem_responses(400, 401, 403, 404, 503),
        summary="Available to sell and the atp timeline of one sku",
    )
    async def one(
        self, channel: ChannelParam, sku: SkuParam, settings: Settings, reader: AvailabilityReader
    ) -> Response[Availability]:
        known_channel(settings, channel)
        return Response(content=await reader.one(channel, sku), media_type="application/json")  # type: ignore[arg-type]

    @get(
        "/{sku:str}/explain",
        responses=problem_responses(400, 401, 403, 404, 503),
        summary="The read of one sku and why it shows that value",
    )
    async def explain(
        self,
        channel: ChannelParam,
        sku: SkuParam,
        settings: Settings,
        reader: AvailabilityReader,
        allocator: Allocator,
    ) -> Response[ExplainedAvailability]:
        known_channel(settings, channel)
        document = await reader.many(channel, [sku], fresh=True)
        snapshot = await allocator.store.read([sku])
        kit = (await allocator.store.kit_records.of([sku])).get(sku)
        components = None
        if kit is not None:
            reads = await reader.many(channel, [c.sku for c in kit.components], fresh=True)
            components = []
            for part, raw in zip(kit.components, reads, strict=True):
                figures = _figures.decode(raw)
                components.append(
                    ComponentFigures(
                        part.sku,
                        part.quantity,
                        figures.available_to_sell,
                        figures.on_hand,
                        figures.available_to_sell // part.quantity,
                    )
                )
        now = time.time_ns() // 1000
        why = explain(snapshot.states[sku], channel, allocator.projector, now, components)
        body = document[0][:-1] + b',"explain":' + msgspec.json.encode(why) + b"}"
        return Response(content=body, media_type="application/json")  # type: ignore[arg-type]

    @get(
        "/changes",
        responses=problem_responses(400, 401, 403, 404, 503),
        summary="Skus whose available_to_sell changed after the cursor",
    )
    async def changes(
        self,
        channel: ChannelParam,
        settings: Settings,
        reader: AvailabilityReader,
        redis: RedisAccess,
        cursor: Annotated[
            str | None,
            # Stated, not checked by the framework: _decode_cursor also takes the earlier form.
            Parameter(
                schema_extra={"pattern": CURSOR},
                description="next_cursor of the previous page; none: from the start",
            ),
        ] = None,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 500,
    ) -> ChangesPage:
        known_channel(settings, channel)
        layout = redis.layout
        positions = _decode_cursor(cursor, layout.shards)
        pipe = redis.client.pipeline(transaction=False)
        for shard, position in enumerate(positions):
            start = position[0] if position else "-"
            pipe.xrange(layout.changes_key(shard, channel), min=start, max="+", count=limit)
        streams: list[list[tuple[bytes, dict[bytes, bytes]]]] = await pipe.execute()
        picked, after = _page(streams, positions, limit)
        if not picked:
            return ChangesPage(items=[], next_cursor=cursor or _encode_cursor(positions))
        # Straight from Redis: a value older than the change entry just read would never be
        # corrected for the sync client (the sku is not listed again unless it changes).
        documents = await reader.many(channel, list(picked), fresh=True)
        items = [_value_decoder.decode(doc) for doc in documents]
        return ChangesPage(
            items=[ChangeItem(v.sku, v.available_to_sell, v.as_of) for v in items],
            next_cursor=_encode_cursor(after),
        )

    @post(
        "/query",
        responses=problem_responses(400, 401, 403, 404, 413, 503),
        summary="The same for up to 1000 skus, in the order asked",
        status_code=200,
    )
    async def query(
        self, channel: ChannelParam, data: SkuQuery, settings: Settings, reader: AvailabilityReader
    ) -> Response[AvailabilityList]:
        known_channel(settings, channel)
        documents = await reader.many(channel, data.skus)
        body = b"".join(
            (
                b'{"channel":',
                msgspec.json.encode(channel),
                b',"items":[',
                b",".join(documents),
                b"]}",
            )
        )
        return Response(content=body, media_type="application/json")  # type: ignore[arg-type]
