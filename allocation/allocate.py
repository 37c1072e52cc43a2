"""Batch allocation of order lines against the projection (contract section 4, issue 3), vectorized.

The rules, for lines taken in order (higher-priority channels first, then as given):

- A line of channel c for sku s takes ``take = min(quantity, available_to_sell(c,s))`` from
  stock, where net(c,s) counts everything reserved so far, including earlier lines of the
  batch (from stock or as backorders). The take goes whole to the first location of c's
  preference order whose free stock (on_hand - reserved, clipped at 0) covers it, else it is
  split in location order, taking min(free, remaining) from each.
- With backorder, the rest is promised from inbound: ``backordered = min(rest, atp(c,s,end
  of horizon))`` computed after the take, ``promise_day`` is the earliest day d with
  atp(c,s,d) >= backordered, and the units are reserved at the first location (in c's
  order) holding an inbound line due that day. What is left is ``unfilled``.

``allocation.reference`` writes the same rules as plain loops; the tests hold the two equal.

How it is vectorized. Skus never interact, so lines are sorted by (sku, priority, order
given) and all skus advance together; the state is on_hand - reserved per (sku, location).
The lines of a sku form *runs*: consecutive lines of one channel. Round r settles the r-th
run of every sku at once (with distinct priorities a sku has at most one run per channel).
Within a run everything but the location choice is prefix sums:

- Only the run's own lines change net(c,s) during the run, each by what it consumes (take +
  backordered): every line takes in full until the first one that is short (cumulative
  quantity > available_to_sell), which takes the remainder; after it, stock lines get
  nothing and backorder lines share what atp at the end of the horizon leaves, a clipped
  cumulative sum. Once a line is short the rest of its run takes no stock, so backorder
  reservations never change where the run takes stock.
- Promise days are a search of the threshold "consumed after the line - (net - safety)" in
  the cumulative inbound timeline of (channel, sku), which does not change in a batch.

Two steps are order-dependent in a way no numpy scan expresses, so each runs as a small loop
of vectorized steps (never a loop over lines or skus):

- First fit: whether a line fits at a location depends on what every earlier line left
  there. Each placement step gives every pending line its first fit against the free stock
  at the start of the step. That is exact for the longest prefix of each run in which no
  location receives more than it had free (free only decreases, so the locations before the
  chosen one still do not fit); the next line is placed exactly against the updated stock,
  and the step repeats for the rest. A step usually settles every line.
- Speculation, for the lines after RUN_ROUNDS runs of a sku (channels of one priority
  alternating on a busy sku, where rounds would degrade into a loop over lines). Every line
  in play gets its outcome computed from the state and a grouped prefix sum of what the
  earlier lines are *guessed* to reserve (one row of units per location per line; initially
  nothing). For each sku, the lines up to the first wrong guess had exact inputs, and so
  did that line: they are committed; the others keep their computed rows as the next guess.
  Each step commits at least one line per sku. Two things keep the steps few and small: a
  line whose channel has nothing left to sell or promise at the committed state gets
  nothing whatever precedes it (nets only decrease in a batch), so it is settled at once,
  wherever it is; and only the first ``reach`` pending lines of a sku are in play, doubled
  while its guesses hold and cut back after a wrong one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from allocation.in_turn import Line, allocate_in_turn
from allocation.network import NONE, Bools, Ints, Network, Supply
from allocation.projection import available_to_sell, inbound_timeline

__all__ = ["NONE", "Allocation", "allocate", "check_lines"]  # NONE: promise of no backorder


@dataclass(frozen=True)
class Allocation:
    """The outcome of a batch, per line in the order given.

    Attributes:
        taken: (N, L) units taken from stock on hand, per location.
        backordered: (N,) units promised from inbound.
        promise_day: (N,) the promise date in days since the epoch, NONE when nothing is
            backordered.
        promise_location: (N,) the location the backordered units are reserved at, NONE
            when nothing is backordered.
        unfilled: (N,) quantity - taken - backordered.
        reserved: (S, L) Supply.reserved after the batch (stock and backorder reservations).
    """

    taken: Ints
    backordered: Ints
    promise_day: Ints
    promise_location: Ints
    unfilled: Ints
    reserved: Ints


def check_lines(
    supply: Supply,
    network: Network,
    line_channel: Ints,
    line_sku: Ints,
    line_quantity: Ints,
    line_backorder: Bools,
) -> None:
    """Raise ValueError unless the batch is well-formed (shared with the reference)."""
    n_skus, n_locations = supply.on_hand.shape
    if supply.reserved.shape != supply.on_hand.shape or n_locations != len(network.locations):
        raise ValueError("on_hand and reserved must be (skus, network locations)")
    if supply.safety_stock.shape != (n_skus, len(network.channels)):
        raise ValueError("safety_stock must be (skus, channels)")
    if (supply.safety_stock < 0).any():
        raise ValueError("safety stock must not be negative")
    n = line_quantity.shape
    if len(n) != 1 or line_channel.shape != n or line_sku.shape != n or line_backorder.shape != n:
        raise ValueError("line arrays must be one-dimensional and of equal length")
    if (line_quantity < 1).any():
        raise ValueError("a line quantity must be at least 1")
    if ((line_channel < 0) | (line_channel >= len(network.channels))).any():
        raise ValueError("unknown channel index")
    if ((line_sku < 0) | (line_sku >= n_skus)).any():
        raise ValueError("unknown sku index")


def allocate(
    supply: Supply,
    network: Network,
    today: int,
    line_channel: Ints,
    line_sku: Ints,
    line_quantity: Ints,
    line_backorder: Bools,
) -> Allocation:
    """Allocate a batch of order lines.

    Args:
        supply: on hand, reserved (before the batch), safety stock and inbound of S skus.
        network: the channels.
        today: the current UTC date, in days since the epoch.
        line_channel: (N,) channel index of each line.
        line_sku: (N,) sku row (into ``supply``) of each line.
        line_quantity: (N,) units ordered, >= 1.
        line_backorder: (N,) whether the rest may be promised from inbound.

    Raises:
        ValueError: malformed input (see ``check_lines``).
    """
    check_lines(supply, network, line_channel, line_sku, line_quantity, line_backorder)
    channel = np.asarray(line_channel, dtype=np.int64)
    sku = np.asarray(line_sku, dtype=np.int64)
    quantity = np.asarray(line_quantity, dtype=np.int64)
    backorder = np.asarray(line_backorder, dtype=np.bool_)
    if network.offers_differ:
        return _one_by_one(supply, network, today, channel, sku, quantity, backorder)
    n = quantity.size
    # The state: on_hand - reserved per (sku, location); free = max(0, unreserved).
    unreserved = (supply.on_hand - supply.reserved).astype(np.int64)
    out = _Result(
        taken=np.zeros((n, len(network.locations)), dtype=np.int64),
        take=np.zeros(n, dtype=np.int64),
        backordered=np.zeros(n, dtype=np.int64),
        promise_day=np.full(n, NONE, dtype=np.int64),
        promise_location=np.full(n, NONE, dtype=np.int64),
    )
    if n:
        # Processing order within a sku: higher priority first, then as given.
        tier = np.unique(network.priority, return_inverse=True)[1].astype(np.int64)
        order = _stable_order([sku, tier[channel]])
        sorted_lines = _Lines(
            index=order,
            channel=channel[order],
            sku=sku[order],
            quantity=quantity[order],
            backorder=backorder[order],
        )
        _allocate_sorted(supply, network, today, sorted_lines, unreserved, out)
    return Allocation(
        taken=out.taken,
        backordered=out.backordered,
        promise_day=out.promise_day,
        promise_location=out.promise_location,
        unfilled=quantity - out.take - out.backordered,
        reserved=supply.on_hand - unreserved,
    )


def _one_by_one(
    supply: Supply,
    network: Network,
    today: int,
    channel: Ints,
    sku: Ints,
    quantity: Ints,
    backorder: Bools,
) -> Allocation:
    """The batch's lines one after another in its order (priority, then as given), by the
    scalar rules of ``allocation.in_turn``: for networks where some channel has
    min_available, max_available or max_order_quantity (contract section 11). A cap lets
    a line stop short while the next one still takes, which the vectorized runs below do
    not model."""
    priority = network.priority.tolist()
    channels, skus = channel.tolist(), sku.tolist()
    order = sorted(range(quantity.size), key=lambda i: (priority[channels[i]], i))
    lines = [Line(channels[i], skus[i], int(quantity[i]), bool(backorder[i])) for i in order]
    outcome = allocate_in_turn(supply, network, today, lines)
    if outcome is None:  # input check_lines lets through but the scalar path refuses
        raise ValueError("a line the allocation refuses")
    n, n_locations = quantity.size, len(network.locations)
    taken = np.zeros((n, n_locations), dtype=np.int64)
    backordered, day, where, unfilled = (np.zeros(n, dtype=np.int64) for _ in range(4))
    reserved = supply.reserved.copy()
    for k, i in enumerate(order):
        taken[i] = outcome.taken[k]
        backordered[i], day[i] = outcome.backordered[k], outcome.promise_day[k]
        where[i], unfilled[i] = outcome.promise_location[k], outcome.unfilled[k]
        reserved[skus[i]] += taken[i]
        if backordered[i]:
            reserved[skus[i], where[i]] += backordered[i]
    return Allocation(taken, backordered, day, where, unfilled, reserved)


@dataclass(frozen=True)
class _Lines:
    index: Ints  # position in the batch as given
    channel: Ints
    sku: Ints
    quantity: Ints
    backorder: Bools


@dataclass(frozen=True)
class _Result:
    taken: Ints  # (N, L)
    take: Ints  # (N,) taken.sum(axis=1)
    backordered: Ints
    promise_day: Ints
    promise_location: Ints


RUN_ROUNDS = 16
"""Runs of a sku settled round by round; lines after them are settled by speculation."""

SPECULATION_WINDOW = 256
"""Pending lines of a sku in play in a speculation step, at least (doubled for a sku each time
all its guesses held)."""


def _allocate_sorted(
    supply: Supply,
    network: Network,
    today: int,
    lines: _Lines,
    unreserved: Ints,
    out: _Result,
) -> None:
    """Allocate lines sorted by (sku, priority, order given); updates unreserved and out.

    ``unreserved`` (S, L) is on_hand - reserved.
    """
    new_sku = _starts(lines.sku)
    new_run = new_sku | _starts(lines.channel)
    run_id = np.cumsum(new_run) - 1
    run_rank = run_id - run_id[new_sku][np.cumsum(new_sku) - 1]
    by_round = _stable_order([run_rank])  # keeps each round in processing order
    bounds = np.searchsorted(run_rank[by_round], np.arange(int(run_rank.max()) + 2))
    order = _PreferenceOrder.of(network)
    rounds = min(len(bounds) - 1, RUN_ROUNDS)
    for r in range(rounds):
        at = by_round[bounds[r] : bounds[r + 1]]
        _allocate_runs(supply, network, today, lines, at, run_id[at], order, unreserved, out)
    if rounds < len(bounds) - 1:
        later = np.sort(by_round[bounds[rounds] :])  # the rest of each sku, in order
        _speculate(supply, network, today, lines, later, order, unreserved, out)


def _allocate_runs(
    supply: Supply,
    network: Network,
    today: int,
    lines: _Lines,
    at: Ints,
    run_id: Ints,
    order: _PreferenceOrder,
    unreserved: Ints,
    out: _Result,
) -> None:
    """Allocate one run (consecutive lines of one channel) of each of several distinct skus.

    ``at`` indexes ``lines``; the lines of a run are contiguous and in processing order.
    """
    c, s, q, bo_ok = lines.channel[at], lines.sku[at], lines.quantity[at], lines.backorder[at]
    run_start = _starts(run_id)
    first = np.flatnonzero(run_start)
    g = np.cumsum(run_start) - 1  # run of each line
    rc, rs = c[first], s[first]

    # net(c,s), available_to_sell(c,s) at the start of each run.
    net = np.einsum("ij,ij->i", unreserved[rs], order.in_network[rc])
    ss = supply.safety_stock[rs, rc]
    ats = available_to_sell(net, ss)[g]

    # Consumption (take + backordered) of the run up to each line. Lines take in full until
    # the first short one, which takes what is left of available_to_sell.
    total_q = _grouped_cumsum(q, first, g)
    before = total_q - q
    short = total_q > ats  # this line or an earlier one of the run is short
    first_short = short & (run_start | ~np.roll(short, 1))
    take = np.where(short, 0, q)
    take[first_short] = ats[first_short] - before[first_short]
    consumed = before + take

    backordered = np.zeros(at.size, dtype=np.int64)
    tail = np.flatnonzero(short)  # the short lines of each run, from its first short one
    if bo_ok[tail].any():
        head = (net - ss)[g[tail]]  # may be negative
        pairs = np.zeros((len(network.channels), supply.n_skus), dtype=np.bool_)
        pairs[c[tail], s[tail]] = True
        inbound = _Inbound.of(supply, network, today, pairs)
        # Backorder lines consume up to atp at the end of the horizon, before max(0, .):
        # cap = net - ss + inbound due within the horizon.
        cap = head + inbound.total(c[tail], s[tail])
        tq, tb, t_before = q[tail], bo_ok[tail], before[tail]
        t_first = first_short[tail]
        consumed_first = np.where(
            tb, np.maximum(t_before, np.minimum(t_before + tq, cap)), consumed[tail]
        )
        # After the first short line only backorder lines consume: a clipped running sum.
        t_start = np.flatnonzero(t_first)
        t_run = np.cumsum(t_first) - 1
        base = consumed_first[t_start][t_run]
        later_q = np.where(~t_first & tb, tq, 0)
        later_total = _grouped_cumsum(later_q, t_start, t_run)
        t_consumed_before = np.where(
            t_first, t_before, np.maximum(base, np.minimum(base + later_total - later_q, cap))
        )
        t_consumed = np.where(
            t_first, consumed_first, np.maximum(base, np.minimum(base + later_total, cap))
        )
        backordered[tail] = t_consumed - t_consumed_before - take[tail]  # 0 on stock-only

        # Promise: the first due day at which inbound covers what was consumed beyond
        # net - ss.
        promised = np.flatnonzero(backordered[tail] > 0)
        day, location = inbound.promise(
            c[tail][promised], s[tail][promised], (t_consumed - head)[promised]
        )
        promise = (tail[promised], day, location)
    else:
        empty = np.zeros(0, dtype=np.int64)
        promise = (empty, empty, empty)

    # Stock locations (first fit, else split), then the backorder reservations: a line that
    # backorders is short, so the lines after it in its run take no stock.
    index = lines.index[at]
    _place_runs(order, c, s, g, take, unreserved, index, out.taken)
    promised, day, location = promise
    np.subtract.at(unreserved, (s[promised], location), backordered[promised])
    out.take[index] = take
    out.backordered[index] = backordered
    out.promise_day[index[promised]] = day
    out.promise_location[index[promised]] = location


def _place_runs(
    order: _PreferenceOrder,
    c: Ints,
    s: Ints,
    g: Ints,
    take: Ints,
    unreserved: Ints,
    index: Ints,
    taken: Ints,
) -> None:
    """Place each line's take (first fit, else split), writing ``taken[index]`` and taking
    the units off ``unreserved`` (S, L).

    Sequential first fit, settled in steps (see the module docstring): each step gives every
    pending line its first fit against the current free stock, settles the longest prefix of
    each run in which no location is given more than it has free, and places the next line
    exactly.
    """
    n_locations = unreserved.shape[1]
    pending = np.flatnonzero(take > 0)
    while pending.size:
        pc, ps, pg, t = c[pending], s[pending], g[pending], take[pending]
        fit, fits = order.first_fit(pc, ps, t, unreserved)
        start = _starts(pg)
        ok = fits.copy()
        shared = np.flatnonzero(~(start & np.append(start[1:], True)))
        if shared.size:
            # Runs with several pending lines: cumulative intake per location.
            rows = np.arange(shared.size)
            wanted = np.zeros((shared.size, n_locations), dtype=np.int64)
            wanted[rows, fit[shared]] = np.where(fits[shared], t[shared], 0)
            in_run = start[shared]
            intake = _grouped_cumsum(wanted, np.flatnonzero(in_run), np.cumsum(in_run) - 1)
            free = unreserved[ps[shared], fit[shared]]
            ok[shared] &= intake[rows, fit[shared]] <= free
        failed = _grouped_cumsum(
            (~ok).astype(np.int64), np.flatnonzero(start), np.cumsum(start) - 1
        )
        settled = np.flatnonzero(failed == 0)
        first_failed = ~ok & (failed == 1)  # the first line after the settled prefix
        exact = np.flatnonzero(first_failed)
        taken[index[pending[settled]], fit[settled]] = t[settled]
        np.subtract.at(unreserved, (ps[settled], fit[settled]), t[settled])
        if exact.size:
            es = ps[exact]  # one line per run, so distinct skus
            placed = order.place(pc[exact], unreserved[es], t[exact])
            taken[index[pending[exact]]] = placed
            unreserved[es] -= placed
        pending = pending[(failed > 0) & ~first_failed]


def _speculate(
    supply: Supply,
    network: Network,
    today: int,
    lines: _Lines,
    pending: Ints,
    order: _PreferenceOrder,
    unreserved: Ints,
    out: _Result,
) -> None:
    """Allocate ``lines[pending]`` (for each sku, the rest of its lines in order) by steps of
    guess and commit; see the module docstring."""
    bo = pending[lines.backorder[pending]]
    pairs = np.zeros((len(network.channels), supply.n_skus), dtype=np.bool_)
    pairs[lines.channel[bo], lines.sku[bo]] = True
    inbound = _Inbound.of(supply, network, today, pairs)
    # What each line is guessed to reserve per location, by line; known: it has a guess.
    guess = np.zeros((lines.sku.size, unreserved.shape[1]), dtype=np.int64)
    known = np.zeros(lines.sku.size, dtype=np.bool_)
    # Per sku, how many of its pending lines are in play.
    reach = np.full(supply.n_skus, SPECULATION_WINDOW, dtype=np.int64)
    while pending.size:
        c, s = lines.channel[pending], lines.sku[pending]
        # A line whose channel has nothing left to sell (nor, for a backorder line, to
        # promise) gets nothing whatever the lines before it do, since nets only decrease
        # during a batch: settle it now, wherever it is (its outcome is the default).
        new_sku = _starts(s)
        active = s[new_sku]
        net = unreserved[active] @ order.in_network.T  # (active skus, C)
        head = net[np.cumsum(new_sku) - 1, c] - supply.safety_stock[s, c]
        idle = head <= 0
        idle_bo = np.flatnonzero(idle & lines.backorder[pending])
        idle[idle_bo] = head[idle_bo] + inbound.total(c[idle_bo], s[idle_bo]) <= 0
        if idle.any():
            busy = ~idle
            pending, c, s = pending[busy], c[busy], s[busy]
            if not pending.size:
                return

        # In play: the first `reach` pending lines of each sku.
        start = _starts(s)
        first = np.flatnonzero(start)
        sku_of = np.cumsum(start) - 1
        position = np.arange(s.size) - first[sku_of]
        n_known = np.add.reduceat(known[pending].astype(np.int64), first)  # a prefix
        play = np.flatnonzero(position < reach[s])
        start = start[play]
        first = np.flatnonzero(start)
        group = np.cumsum(start) - 1
        at = pending[play]
        guessed = guess[at]
        # Each line's view of on_hand - reserved: the state less the rows guessed before it.
        before = _grouped_cumsum(guessed, first, group) - guessed
        seen = unreserved[s[play]] - before
        line = _outcome(
            supply,
            order,
            inbound,
            c[play],
            s[play],
            lines.quantity[at],
            lines.backorder[at],
            seen,
        )
        wrong = np.asarray((line.row != guessed).any(axis=1))
        wrong_so_far = _grouped_cumsum(wrong.astype(np.int64), first, group)
        done = (wrong_so_far == 0) | (wrong & (wrong_so_far == 1))

        # Commit: the done lines are a prefix of each sku's pending lines, and the rows before
        # the last of them were guessed right.
        last = np.flatnonzero(done & np.append(~done[1:] | start[1:], True))
        unreserved[s[play[last]]] -= before[last] + line.row[last]
        index = lines.index[at[done]]
        out.taken[index] = line.taken[done]
        out.take[index] = line.take[done]
        out.backordered[index] = line.backordered[done]
        out.promise_day[index] = line.promise_day[done]
        out.promise_location[index] = line.promise_location[done]
        guess[at] = line.row
        known[at] = True
        # Every sku commits at least its first pending line, so `last` has one line per sku.
        # Where all the guesses held, look twice as far ahead next time; after a wrong guess,
        # the guesses after it may be stale too: look about as far as this step got.
        committed = position[play[last]] + 1
        held = committed > n_known
        sku = s[play[first]]
        # Guesses beyond the window of a sku whose guesses broke were made from a prefix now
        # known to be wrong: count them as unknown (they stay as guesses all the same).
        known[pending[~held[sku_of] & (position >= reach[s])]] = False
        reach[sku] = np.where(held, 2 * reach[sku], np.maximum(SPECULATION_WINDOW, 2 * committed))
        left = np.ones(pending.size, dtype=np.bool_)
        left[play[done]] = False
        pending = pending[left]


@dataclass(frozen=True)
class _Outcome:
    taken: Ints  # (n, L) from stock
    take: Ints  # (n,) taken.sum(axis=1)
    backordered: Ints
    promise_day: Ints
    promise_location: Ints
    row: Ints  # (n, L) reserved by the line: taken plus backordered at its promise location


def _outcome(
    supply: Supply,
    order: _PreferenceOrder,
    inbound: _Inbound,
    c: Ints,
    s: Ints,
    q: Ints,
    backorder: Bools,
    seen: Ints,
) -> _Outcome:
    """What each line does, given ``seen`` (n, L): on_hand - reserved of its sku just before
    it. ``inbound`` covers every (c, s) of a backorder line."""
    n = c.size
    net = np.einsum("ij,ij->i", seen, order.in_network[c])
    ss = supply.safety_stock[s, c]
    take = np.minimum(q, available_to_sell(net, ss))
    taken = order.place(c, seen, take)
    row = taken
    backordered = np.zeros(n, dtype=np.int64)
    promise_day = np.full(n, NONE, dtype=np.int64)
    promise_location = np.full(n, NONE, dtype=np.int64)
    short = np.flatnonzero(backorder & (take < q))
    if short.size:
        # The take exhausted available_to_sell, so this is <= 0: backorders come from inbound.
        head = (net - take - ss)[short]
        # atp at the end of the horizon caps the backorder.
        end = np.maximum(0, head + inbound.total(c[short], s[short]))
        units = np.minimum((q - take)[short], end)
        promised = units > 0
        lines, units, head = short[promised], units[promised], head[promised]
        # The first day with atp = head + inbound due by then >= units.
        day, location = inbound.promise(c[lines], s[lines], units - head)
        backordered[lines] = units
        promise_day[lines] = day
        promise_location[lines] = location
        row = taken.copy()
        row[lines, location] += units
    return _Outcome(
        taken=taken,
        take=take,
        backordered=backordered,
        promise_day=promise_day,
        promise_location=promise_location,
        row=row,
    )


@dataclass(frozen=True)
class _PreferenceOrder:
    """Each channel's locations in preference order, in the forms the engine uses.

    Attributes:
        in_network: (C, L) 1 where l is in L_c, else 0.
        perm: (C, L) locations in c's order, then the others.
        valid: (C, L) True for the first |L_c| positions of perm.
    """

    in_network: Ints
    perm: Ints
    valid: Bools

    @classmethod
    def of(cls, network: Network) -> _PreferenceOrder:
        n_locations = len(network.locations)
        rank = np.where(network.rank >= 0, network.rank, n_locations)
        return cls(
            in_network=network.mask.astype(np.int64),
            perm=np.argsort(rank, axis=1, kind="stable").astype(np.int64),
            valid=np.arange(n_locations)[None, :] < network.mask.sum(axis=1)[:, None],
        )

    def first_fit(self, c: Ints, s: Ints, take: Ints, unreserved: Ints) -> tuple[Ints, Bools]:
        """The first location of each line's channel whose free stock of sku s covers take
        (take >= 1), and whether there is one (location 0 where there is none).

        Loops over preference positions, each time only over the lines not placed yet
        (usually few after the first position).
        """
        location = np.zeros(c.size, dtype=np.int64)
        fits = np.zeros(c.size, dtype=np.bool_)
        rest = np.arange(c.size)
        for position in range(unreserved.shape[1]):
            rc = c[rest]
            candidate = self.perm[rc, position]
            hit = self.valid[rc, position] & (unreserved[s[rest], candidate] >= take[rest])
            location[rest[hit]] = candidate[hit]
            fits[rest[hit]] = True
            rest = rest[~hit]
            if not rest.size:
                break
        return location, fits

    def place(self, c: Ints, seen: Ints, take: Ints) -> Ints:
        """Where each line takes its stock, (n, L): the first location of its channel whose
        free stock covers the take, else split in location order. ``seen`` (n, L) is
        on_hand - reserved (free = max(0, seen)); take <= the free stock of the channel.
        """
        placed = np.zeros_like(seen)
        # First fit: a loop over preference positions, each time over the lines not placed
        # yet (few after the first position). take >= 1 here, so seen >= take means free.
        rest = np.flatnonzero(take > 0)
        for position in range(seen.shape[1]):
            rc = c[rest]
            candidate = self.perm[rc, position]
            hit = self.valid[rc, position] & (seen[rest, candidate] >= take[rest])
            placed[rest[hit], candidate[hit]] = take[rest[hit]]
            rest = rest[~hit]
            if not rest.size:
                return placed
        # Split: no single location covers the take; take min(free, remaining) in order.
        perm = self.perm[c[rest]]
        free = np.take_along_axis(np.maximum(seen[rest], 0), perm, axis=1)
        free = np.where(self.valid[c[rest]], free, 0)
        before = np.cumsum(free, axis=1) - free
        part = np.clip(take[rest][:, None] - before, 0, free)
        split = np.zeros_like(part)
        np.put_along_axis(split, perm, part, axis=1)
        placed[rest] = split
        return placed


@dataclass(frozen=True)
class _Inbound:
    """The cumulative inbound timeline of the (channel, sku) pairs a batch may backorder.

    Entries are sorted by (channel, sku, day); ``running`` is the inbound cumulated over all
    entries (strictly increasing), so a per-pair threshold is one searchsorted.
    """

    keys: Ints  # (G,) channel * S + sku of each pair
    pair_total: Ints  # (G,) inbound due by the end of the horizon
    base: Ints  # (G,) running before the pair's first entry
    running: Ints  # (T,)
    day: Ints  # (T,)
    location: Ints  # (T,)
    n_skus: int

    @classmethod
    def of(cls, supply: Supply, network: Network, today: int, pairs: Bools) -> _Inbound:
        timeline = inbound_timeline(supply, network, today, pairs)
        key = timeline.channel * supply.n_skus + timeline.sku
        start = _starts(key)
        end = np.append(start[1:], True)[: start.size]
        step = timeline.cumulative - np.where(start, 0, np.roll(timeline.cumulative, 1))
        running = np.cumsum(step)
        return cls(
            keys=key[start],
            pair_total=timeline.cumulative[end],
            base=(running - timeline.cumulative)[start],
            running=running,
            day=timeline.day,
            location=timeline.location,
            n_skus=supply.n_skus,
        )

    def total(self, c: Ints, s: Ints) -> Ints:
        """Inbound due by the end of the horizon of (c, s); 0 where there is none."""
        if not self.keys.size:
            return np.zeros(c.size, dtype=np.int64)
        key = c * self.n_skus + s
        pair = np.minimum(np.searchsorted(self.keys, key), self.keys.size - 1)
        return np.where(self.keys[pair] == key, self.pair_total[pair], 0)

    def promise(self, c: Ints, s: Ints, need: Ints) -> tuple[Ints, Ints]:
        """The first due day of (c, s) by which cumulative inbound reaches need, and the
        preferred location with a line due that day (requires 1 <= need <= total(c, s))."""
        pair = np.searchsorted(self.keys, c * self.n_skus + s)
        entry = np.searchsorted(self.running, self.base[pair] + need)
        return self.day[entry], self.location[entry]


def _stable_order(keys: list[Ints]) -> Ints:
    """Stable argsort by non-negative integer keys, most significant first.

    LSD radix over 16-bit digits: numpy's stable sort of 16-bit integers is a radix sort,
    several times faster than a comparison sort of int64 keys.
    """
    order = np.arange(keys[0].size)
    for key in reversed(keys):
        top = int(key.max()) if key.size else 0
        shift = 0
        while True:
            digit = ((key[order] >> shift) & 0xFFFF).astype(np.uint16)
            order = order[np.argsort(digit, kind="stable")]
            shift += 16
            if top >> shift == 0:
                break
    return order


def _starts(values: Ints) -> Bools:
    """True where a run of equal consecutive values starts."""
    start = np.ones(values.size, dtype=np.bool_)
    start[1:] = values[1:] != values[:-1]
    return start


def _grouped_cumsum(values: Ints, first: Ints, group: Ints) -> Ints:
    """Inclusive cumulative sum along axis 0, restarting at each group's first row."""
    running = np.cumsum(values, axis=0)
    before: Ints = (running - values)[first]
    result: Ints = running - before[group]
    return result
