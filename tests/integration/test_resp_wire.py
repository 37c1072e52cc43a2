"""The consumer's Redis client, with its packer, against a real Redis."""

from __future__ import annotations

import msgspec
import pytest

from atp_service.config import Settings
from atp_service.runtime import sync_redis
from atp_service.store.packer import LARGE_BYTES

pytestmark = pytest.mark.integration


def test_large_and_small_values_round_trip_through_a_script(
    redis_url: str, test_settings: Settings
) -> None:
    redis_settings = msgspec.structs.replace(test_settings.redis, url=redis_url)
    client = sync_redis(msgspec.structs.replace(test_settings, redis=redis_settings))
    blobs = [bytes([i]) * (LARGE_BYTES * (i + 1) + i) for i in range(3)]
    script = client.register_script(
        "for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[i]) end return #ARGV"
    )
    args = [blobs[0], "small", blobs[1], 42, blobs[2]]
    assert script(keys=[f"t:{i}" for i in range(len(args))], args=args) == len(args)
    assert client.mget([f"t:{i}" for i in range(len(args))]) == [
        blobs[0],
        b"small",
        blobs[1],
        b"42",
        blobs[2],
    ]
    # And a pipeline, which packs several commands into one send.
    pipe = client.pipeline(transaction=True)
    pipe.set("t:p", blobs[2])
    pipe.get("t:p")
    assert pipe.execute() == [True, blobs[2]]
    client.close()
