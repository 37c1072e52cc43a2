"""The contract's formulas (sections 1 and 11), for many skus and every channel at once.

    net(c,s)               = sum over l in L_c of (on_hand(s,l) - reserved(s,l))
    safety_stock(c,s)      = max(the channel's, the sku's override, if any, and
                                 ceil(on_hand(c,s) * safety_stock_percent(c) / 100))
    v                      = max(0, net(c,s) - safety_stock(c,s))
    available_to_sell(c,s) = offer(v): 0 if v < min_available(c), else min(v, max_available(c))
    atp(c,s,d)             = offer(max(0, net(c,s) + inbound due by d - safety_stock(c,s)))

"inbound due by d" counts lines at locations of L_c with eta <= d and eta <= today + H_c; an
eta in the past counts as due today. This module is the one place these formulas are
written; the consumer, the allocation engine and the tests all call it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from allocation.network import Bools, Ints, Network, Supply

NO_CHANGE = np.iinfo(np.int64).max


@dataclass(frozen=True)
class Projection:
    """Per (sku, channel) figures and the flattened atp timeline.

    Attributes:
        on_hand, reserved, net, safety_stock, available_to_sell: (S, C).
        timeline_channel, timeline_sku, timeline_day, timeline_atp: (T,) one entry per
            distinct due day within the horizon, sorted by channel, sku, day; atp cumulative.
        next_change_day: (S,) the first day (since epoch) on which the timeline of some
            channel changes with no event (a due date moves to today, or a line enters the
            horizon); NO_CHANGE when nothing will.
    """

    on_hand: Ints
    reserved: Ints
    net: Ints
    safety_stock: Ints
    available_to_sell: Ints
    timeline_channel: Ints
    timeline_sku: Ints
    timeline_day: Ints
    timeline_atp: Ints
    next_change_day: Ints


def available_to_sell(net: Ints, safety_stock: Ints) -> Ints:
    """max(0, net - safety stock): available_to_sell of a channel with no buffers."""
    ats: Ints = np.maximum(0, net - safety_stock)
    return ats


def offer(value: int, min_available: int, max_available: int) -> int:
    """A channel's buffers applied to one value (section 11): the last units below
    ``min_available`` are not offered, and no more than ``max_available`` is."""
    return 0 if value < min_available else min(value, max_available)


def offered(values: Ints, network: Network, channel: Ints | None = None) -> Ints:
    """``offer`` for many values: (S, C) by column, or (T,) with each entry's ``channel``."""
    if channel is None:
        low, high = network.min_available[None, :], network.max_available[None, :]
    else:
        low, high = network.min_available[channel], network.max_available[channel]
    out: Ints = np.where(values < low, 0, np.minimum(values, high))
    return out


def with_percent(safety_stock: Ints, on_hand: Ints, network: Network) -> Ints:
    """Safety stock (S, C) raised to each channel's percent of its on_hand (S, L), rounded up."""
    percent = network.safety_stock_percent
    if not percent.any():
        return safety_stock
    on_hand_c = on_hand @ network.mask.T.astype(np.int64)
    share = -((-on_hand_c * percent[None, :]) // 100)  # ceil, also for negative on_hand
    out: Ints = np.maximum(safety_stock, share)
    return out


def project(supply: Supply, network: Network, today: int) -> Projection:
    """Compute the projection of every sku in ``supply`` for every channel.

    Args:
        supply: raw quantities of S skus over the network's locations.
        network: the channels.
        today: the current UTC date, in days since the epoch.
    """
    mask = network.mask.T.astype(np.int64)  # (L, C)
    on_hand = supply.on_hand @ mask
    reserved = supply.reserved @ mask
    net = on_hand - reserved
    ats = offered(available_to_sell(net, supply.safety_stock), network)
    timeline = _timeline(supply, network, net, today)
    return Projection(
        on_hand=on_hand,
        reserved=reserved,
        net=net,
        safety_stock=supply.safety_stock,
        available_to_sell=ats,
        timeline_channel=timeline[0],
        timeline_sku=timeline[1],
        timeline_day=timeline[2],
        timeline_atp=timeline[3],
        next_change_day=_next_change_day(supply, network, today),
    )


@dataclass(frozen=True)
class InboundTimeline:
    """Cumulative inbound due per (channel, sku, day), within each channel's horizon.

    Attributes:
        channel, sku, day: (T,) one entry per distinct due day (an eta in the past counts as
            today), sorted by channel, sku, day.
        cumulative: (T,) the inbound due by that day ("inbound due by d" of the contract).
        location: (T,) the first location, in the channel's preference order, holding an
            inbound line due on that day.
    """

    channel: Ints
    sku: Ints
    day: Ints
    cumulative: Ints
    location: Ints


def inbound_timeline(
    supply: Supply, network: Network, today: int, pairs: Bools | None = None
) -> InboundTimeline:
    """The "inbound due by d" part of atp(c,s,d), for every channel and sku with inbound.

    Args:
        pairs: (C, S) if given, only the (channel, sku) pairs marked True.
    """
    qty = supply.inbound_quantity
    lines = np.arange(qty.size)
    if pairs is not None:
        wanted_sku = np.asarray(pairs.any(axis=0), dtype=np.bool_)
        lines = np.flatnonzero(wanted_sku[supply.inbound_sku])
    inbound_location = supply.inbound_location[lines]
    # (N, C): line i counts for channel c when its location is in c's network, it is open,
    # and it is due within c's horizon.
    counts = (
        network.mask[:, inbound_location].T
        & (qty[lines] > 0)[:, None]
        & (supply.inbound_eta[lines][:, None] <= today + network.horizon[None, :])
    )
    if pairs is not None:
        counts &= pairs[:, supply.inbound_sku[lines]].T
    line, channel = np.nonzero(counts)
    line = lines[line]
    if line.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return InboundTimeline(empty, empty, empty, empty, empty)
    sku = supply.inbound_sku[line]
    day = np.maximum(supply.inbound_eta[line], today)
    location = supply.inbound_location[line]
    rank = network.rank[channel, location]
    order = np.lexsort((rank, day, sku, channel))
    channel, sku, day, location = channel[order], sku[order], day[order], location[order]
    qty_sorted = qty[line][order]
    # One entry per distinct (channel, sku, day): the last row of each run holds the
    # running total, so cumulate first and keep the ends of runs.
    running = np.cumsum(qty_sorted)
    group_start = np.ones(channel.size, dtype=bool)
    group_start[1:] = (channel[1:] != channel[:-1]) | (sku[1:] != sku[:-1])
    start_index = np.flatnonzero(group_start)
    group_id = np.cumsum(group_start) - 1
    before_group = (running - qty_sorted)[start_index]
    cumulative = running - before_group[group_id]
    run_end = np.ones(channel.size, dtype=bool)
    run_end[:-1] = group_start[1:] | (day[1:] != day[:-1])
    # Rows of a run are sorted by rank, so its first row holds the preferred location.
    run_start = np.ones(channel.size, dtype=bool)
    run_start[1:] = run_end[:-1]
    return InboundTimeline(
        channel=channel[run_end].astype(np.int64),
        sku=sku[run_end].astype(np.int64),
        day=day[run_end].astype(np.int64),
        cumulative=cumulative[run_end].astype(np.int64),
        location=location[run_start].astype(np.int64),
    )


def _timeline(
    supply: Supply, network: Network, net: Ints, today: int
) -> tuple[Ints, Ints, Ints, Ints]:
    inbound = inbound_timeline(supply, network, today)
    channel, sku = inbound.channel, inbound.sku
    atp = np.maximum(0, net[sku, channel] + inbound.cumulative - supply.safety_stock[sku, channel])
    return channel, sku, inbound.day, offered(atp.astype(np.int64), network, channel)


def _next_change_day(supply: Supply, network: Network, today: int) -> Ints:
    result = np.full(supply.n_skus, NO_CHANGE, dtype=np.int64)
    open_lines = supply.inbound_quantity > 0
    if not open_lines.any():
        return result
    eta = supply.inbound_eta[open_lines][:, None]  # (N, 1)
    enters = eta - network.horizon[None, :]  # (N, C): first day it is within the horizon
    # Outside the horizon: changes when it enters. Inside: changes the day after its due
    # day, when a past eta starts counting as "today" and its listed date moves.
    candidate = np.where(enters > today, enters, np.maximum(eta, today) + 1)
    in_network = network.mask[:, supply.inbound_location[open_lines]].T
    candidate = np.where(in_network, candidate, NO_CHANGE).min(axis=1)
    np.minimum.at(result, supply.inbound_sku[open_lines], candidate)
    return result
