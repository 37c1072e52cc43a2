"""Sending script calls to Redis: pipelined in one round trip (``pipelined``), or each
as soon as it is made (``in_turn``), on one connection per node of a cluster, with the
calls a node did not run sent again through the cluster client.
"""

from __future__ import annotations

import collections
import sys
from collections.abc import Iterable, Sequence
from typing import Any, Final

import redis


def raised(replies: list[Any]) -> list[Any]:
    """A pipeline's replies, once none is an error (the first is raised)."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def pipelined(
    client: redis.Redis,
    script: Any,
    calls: Sequence[tuple[list[str], list[Any]]],
    sets: Sequence[tuple[str, bytes, int]] = (),
) -> list[Any]:
    """The script's replies to ``calls``, all sent in one pipeline after ``sets`` (key,
    value, ttl ms) (``script_replies``)."""
    pipe = client.pipeline(transaction=False)
    for key, value, ttl in sets:
        pipe.set(key, value, px=ttl)
    for key_list, args in calls:
        pipe.evalsha(script.sha, len(key_list), *key_list, *args)
    return script_replies(script, calls, pipe.execute(raise_on_error=False), len(sets))


def script_replies(
    script: Any, calls: Sequence[tuple[list[str], list[Any]]], answers: list[Any], sets: int
) -> list[Any]:
    """The script's replies among ``answers`` (after those of ``sets`` SETs); an error
    raises. A script is loaded server by server: one that has not seen it yet (restarted,
    or a replica that took over) gets it, and the call, again through the script object."""
    raised(answers[:sets])
    replies = answers[sets:]
    for i, reply in enumerate(replies):
        if isinstance(reply, redis.exceptions.NoScriptError):
            replies[i] = script(keys=calls[i][0], args=calls[i][1])
    return raised(replies)


def in_turn(
    client: redis.Redis | redis.RedisCluster,
    script: Any,
    calls: Iterable[tuple[list[str], list[Any]]],
    sets: Sequence[tuple[str, bytes, int]] = (),
) -> list[Any]:
    """``pipelined``, each call sent as soon as it is made (on a single Redis with at most
    STEPS_IN_FLIGHT unanswered): Redis runs a write's first steps while the arguments of
    the next ones are made and packed, and other clients' commands between them. On one
    connection of a plain client; on a cluster, on one connection per node, each call on
    its first key's node (a call's keys share a slot)."""
    cluster = isinstance(client, redis.RedisCluster)
    nodes = NodeConnections(client, sys.maxsize if cluster else STEPS_IN_FLIGHT)
    sent: list[tuple[list[str], list[Any]]] = []
    try:
        for key, value, ttl in sets:
            nodes.send(key, ("SET", key, value, "PX", ttl))
        for key_list, args in calls:
            nodes.send(key_list[0], ("EVALSHA", script.sha, len(key_list), *key_list, *args))
            sent.append((key_list, args))
        answers = nodes.answers()
    except BaseException as exc:
        nodes.disconnect()  # replies may be left unread on them
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
            nodes.refresh()
        raise
    finally:
        nodes.release()
    moved = [i for i, answer in enumerate(answers) if isinstance(answer, REDIRECTED)]
    if moved:
        # Sent to a node that no longer serves the slot, so not run: again, in order,
        # through the cluster client, which follows the slot (its steps all moved).
        commands = [("SET", key, value, "PX", ttl) for key, value, ttl in sets]
        commands += [("EVALSHA", script.sha, len(k), *k, *a) for k, a in sent]
        pipe = client.pipeline(transaction=False)
        for i in moved:
            pipe.execute_command(*commands[i])
        for i, answer in zip(moved, pipe.execute(raise_on_error=False), strict=True):
            answers[i] = answer
    return script_replies(script, sent, answers, len(sets))


# Calls sent to a single Redis and not answered yet, at most. Redis runs what a client
# pipelined back to back before it turns to other clients, so a write's steps sent all at
# once held it for many steps' time (docs/performance.md); with two, Redis has the next
# step while the consumer makes the one after. Not on a cluster: there the bound cost the
# fold about a fifth and did not shorten the allocations' wait (the steps spread over the
# nodes, and the sharded allocator's own round trips dominate).
STEPS_IN_FLIGHT: Final = 2


# Replies of a cluster node that did not run the command: the slot is served elsewhere now.
REDIRECTED: Final = (
    redis.exceptions.AskError,  # MovedError is one
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
)


class NodeConnections:
    """One connection per node the commands go to, each command sent at once, with at most
    ``in_flight`` of them unanswered on a node; the answers in the order the commands were
    sent (errors as values)."""

    def __init__(self, client: redis.Redis | redis.RedisCluster, in_flight: int) -> None:
        self.client = client
        self.in_flight = in_flight
        self.taken: dict[str, tuple[Any, Any]] = {}  # node -> (pool, connection)
        self.unread: dict[str, collections.deque[int]] = {}  # node -> commands unanswered
        self.out: list[Any] = []

    def send(self, key: str, command: tuple[Any, ...]) -> None:
        client = self.client
        if isinstance(client, redis.RedisCluster):
            node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
            name, pool = node.name, client.get_redis_connection(node).connection_pool
        else:
            name, pool = "", client.connection_pool
        taken = self.taken.get(name)
        if taken is None:
            taken = self.taken[name] = (pool, pool.get_connection())
            self.unread[name] = collections.deque()
        connection = taken[1]
        connection.send_packed_command(connection.pack_command(*command))
        unread = self.unread[name]
        unread.append(len(self.out))
        self.out.append(None)
        while len(unread) > self.in_flight:
            self._read(name)

    def _read(self, name: str) -> None:
        at = self.unread[name].popleft()
        try:
            self.out[at] = self.taken[name][1].read_response()
        except redis.ResponseError as exc:
            self.out[at] = exc

    def answers(self) -> list[Any]:
        for name, unread in self.unread.items():
            while unread:
                self._read(name)
        return self.out

    def disconnect(self) -> None:
        for _, connection in self.taken.values():
            connection.disconnect()

    def refresh(self) -> None:
        """After a node failed: on a cluster, ask who serves what now (it may have been
        replaced), as the client does after its own commands fail; the caller tries again."""
        if isinstance(self.client, redis.RedisCluster):
            try:
                self.client.nodes_manager.initialize()
            except (redis.RedisError, redis.RedisClusterException):
                pass  # no node answers yet: the next command asks again

    def release(self) -> None:
        for pool, connection in self.taken.values():
            pool.release(connection)
