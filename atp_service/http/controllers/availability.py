"""GET /v1/availability/{channel}/{sku} and POST /v1/availability/{channel}/query."""

from __future__ import annotations

import base64
import re
import time
from typing import Annotated, Final

import msgspec
import redis.asyncio as aredis
from litestar import Controller, Response, get, post
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import Parameter

from atp_service.allocator import Allocator
from atp_service.config import Settings
from atp_service.http.auth import require
from atp_service.http.problems import problem_responses
from atp_service.http.reader import AvailabilityReader
from atp_service.http.schemas import (
    AvailabilityList,
    ChangeItem,
    ChangesPage,
    ChannelParam,
    SkuParam,
    SkuQuery,
)
from atp_service.ops.explain import ComponentFigures, ExplainedAvailability, explain
from atp_service.store.keys import changes_key
from streams.projector import Availability

# A cursor is a position in the channel's change stream: "<entry id>.<skus of that entry
# already returned>". Any string of this form is a position the service can resume from
# (19 digits stay below Redis' 64-bit stream ids), so the document states it as a pattern.
# Empty, like none at all, is the start.
CURSOR: Final = r"^([0-9]{1,19}-[0-9]{1,19}\.[0-9]{1,9})?$"
_CURSOR: Final = re.compile(r"^[0-9]{1,19}-[0-9]{1,19}\.[0-9]{1,9}$")
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


def _decode_cursor(cursor: str | None) -> tuple[str, int] | None:
    """(stream entry id, skus of that entry already returned); None: from the start."""
    if not cursor:
        return None
    if _CURSOR.match(cursor):
        entry, _, done = cursor.partition(".")
        return entry, int(done)
    return _decode_issued_before(cursor)


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


def _encode_cursor(entry: str, done: int) -> str:
    return f"{entry}.{done}"


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
        redis_client: aredis.Redis,
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
        position = _decode_cursor(cursor)
        # Each stream entry lists the skus of one write; the cursor is (entry, how many of
        # its skus were returned), so a page can end inside an entry.
        entries: list[tuple[bytes, dict[bytes, bytes]]] = await redis_client.xrange(  # type: ignore[assignment]
            changes_key(channel), min=position[0] if position else "-", max="+", count=limit
        )
        picked: dict[str, None] = {}
        last = position
        for entry_id, fields in entries:
            entry = entry_id.decode()
            listed = fields[b"s"].decode().split("\n")
            first = position[1] if position and entry == position[0] else 0
            for index in range(first, len(listed)):
                if len(picked) >= limit:
                    break
                picked.setdefault(listed[index], None)
                last = (entry, index + 1)
            if len(picked) >= limit:
                break
        if not picked or last is None:
            return ChangesPage(items=[], next_cursor=cursor or _encode_cursor("0-0", 0))
        # Straight from Redis: a value older than the change entry just read would never be
        # corrected for the sync client (the sku is not listed again unless it changes).
        documents = await reader.many(channel, list(picked), fresh=True)
        items = [_value_decoder.decode(doc) for doc in documents]
        return ChangesPage(
            items=[ChangeItem(v.sku, v.available_to_sell, v.as_of) for v in items],
            next_cursor=_encode_cursor(*last),
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
