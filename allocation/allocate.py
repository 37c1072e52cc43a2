"""Batch allocation of order lines against the projection (contract section 4, issue 3), vectorized.

The rules, for lines taken in order (higher-priority channels first, then as given):

- A line of channel c for sku s wants ``min(quantity, max_order_quantity(c))`` and takes
  ``take = min(wanted, available_to_sell(c,s))`` from stock, where net(c,s) counts
  everything reserved so far, including earlier lines of the batch (from stock or as
  backorders), and available_to_sell applies c's buffers (contract section 11:
  ``offer(v)`` is 0 below min_available, else min(v, max_available)). The take goes whole
  to the first location of c's preference order whose free stock (on_hand - reserved,
  clipped at 0) covers it, else it is split in location order, taking min(free, remaining)
  from each.
- With backorder, the rest of what it wants is promised from inbound: ``backordered =
  min(rest, atp(c,s,end of horizon))`` computed after the take (0 if no inbound is due
  within the horizon), ``promise_day`` is the earliest due day d with atp(c,s,d) >=
  backordered, and the units are reserved at the first location (in c's order) holding an
  inbound line due that day. What is left of the quantity is ``unfilled``.

``allocation.reference`` writes the same rules as plain loops; the tests hold the two equal.

How it is vectorized. Skus never interact, so lines are sorted by (sku, priority, order
given) and all skus advance together; the state is on_hand - reserved per (sku, location).
The lines of a sku form *runs*: consecutive lines of one channel. Round r settles the r-th
run of every sku at once (with distinct priorities a sku has at most one run per channel).
Within a run everything but the location choice is prefix sums:

- Only the run's own lines change net(c,s) during the run, each by what it consumes (take +
  backordered). With v the value before buffers ahead of a line, offer(v) >= x exactly
  when v >= max(min_available, x) (for x <= max_available), so every line consumes in
  full (its take capped at max_available, plus, for a backorder line cut by
  max_available, the rest up to max_available promised) while v covers both, a prefix sum.
  The first line that is short takes what offer() gives and backorders its rest; after it
  v is below min_available or 0, so stock lines get nothing and backorder lines take
  min(wanted, max_available) each while atp at the end of the horizon covers it and
  min_available, the first that falls short getting what is left: a clipped cumulative
  sum. Backorders of lines that took in full are reserved before the next line's take;
  those of short lines cannot change where the run takes stock.
- Promise days are a search of the threshold max(min_available, units) - (net - safety
  after the take) in the cumulative inbound timeline of (channel, sku), which does not
  change in a batch.

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

from allocation.network import NO_CAP, NONE, Bools, Ints, Network, Supply
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

    # net(c,s) - safety stock at the start of each run (may be negative).
    net = np.einsum("ij,ij->i", unreserved[rs], order.in_network[rc])
    head = (net - supply.safety_stock[rs, rc])[g]
    # The channels' buffers (the caps gathered only where the network sets them).
    low = network.min_available[c]
    wanted = q  # the rest of the quantity is unfilled
    if (network.max_order_quantity < NO_CAP).any():
        wanted = np.minimum(q, network.max_order_quantity[c])
    capped = wanted  # the most a line takes from stock
    over = np.zeros(0, dtype=np.int64)
    if (network.max_available < NO_CAP).any():
        high = network.max_available[c]
        capped = np.minimum(wanted, high)
        over = np.flatnonzero(bo_ok & (wanted > capped) & (high > 0))

    # While stock lasts a line consumes ``full``: its capped take, and for a backorder line
    # cut by max_available, the rest up to max_available promised (of a pair with inbound).
    full = capped
    extra = np.zeros(at.size, dtype=np.int64)
    if over.size:
        early = _Inbound.of(supply, network, today, _pairs(supply, network, c[over], s[over]))
        over_due = early.total(c[over], s[over])
        extra[over] = np.where(over_due > 0, np.minimum(wanted - capped, high)[over], 0)
        full = capped + extra
    total = _grouped_cumsum(full, first, g)
    before = total - full  # consumed by the run before each line, while all took in full
    value = np.maximum(0, head - before)  # available_to_sell before buffers
    # A line consumes ``full`` when the value before it reaches min_available and its take,
    # and (with extra) atp at the end of the horizon after the take covers min_available and
    # the extra: offer() then gives min(value, max_available) >= both.
    needed = np.maximum(low, capped)
    if over.size:
        needed[over] = np.where(
            extra[over] > 0,
            np.maximum(needed[over], capped[over] - over_due + np.maximum(low, extra)[over]),
            needed[over],
        )
    if over.size or network.min_available.any():
        missed = value < needed
        short = _grouped_cumsum(missed.astype(np.int64), first, g) > 0  # this or an earlier line
    else:  # needed = full: the first short line is the first whose running total passes v
        short = total > np.maximum(0, head)
    first_short = short & (run_start | ~np.roll(short, 1))  # this line and no earlier one
    # The first short line takes what offer() gives, min(capped, value) or nothing; after it
    # the value is below min_available or 0, so the rest of the run takes no stock.
    take = np.where(short, 0, capped)
    fs = np.flatnonzero(first_short)
    take[fs] = np.where(value[fs] < low[fs], 0, np.minimum(capped[fs], value[fs]))
    backordered = np.where(short, 0, extra)

    promise: list[tuple[Ints, Ints, Ints]] = []
    if over.size:
        # Promise of the lines that took in full: the first due day with
        # head + inbound due >= max(min_available, units), head after the take (>= 0).
        held = over[(extra[over] > 0) & ~short[over]]
        after_take = (head - before - capped)[held]
        need = np.maximum(1, np.maximum(low[held], extra[held]) - after_take)
        promise.append((held, *early.promise(c[held], s[held], need)))
    # The first short line of each run and the backorder lines after it (the others get
    # nothing more and change nothing).
    tail = np.flatnonzero(first_short | (short & bo_ok))
    bo_tail = tail[bo_ok[tail]]
    if bo_tail.size:
        late = _Inbound.of(supply, network, today, _pairs(supply, network, c[bo_tail], s[bo_tail]))
        t_due = late.total(c[tail], s[tail])  # inbound due by the end of the horizon
        t_bo = bo_ok[tail] & (t_due > 0)
        t_low, t_high, t_first = low[tail], network.max_available[c[tail]], first_short[tail]
        # The first short line backorders its rest up to what offer() gives of atp at the end
        # of the horizon after its take.
        after_take = head[tail] - before[tail] - take[tail]
        atp_end = np.maximum(0, after_take + t_due)
        rest = np.minimum(wanted[tail] - take[tail], t_high)
        first_units = np.where(t_first & t_bo & (atp_end >= t_low), np.minimum(rest, atp_end), 0)
        # After it only backorder lines consume, each min(capped, atp at the end) while that
        # atp stays >= min_available; the first that does not get all gets what is left, if
        # that is >= min_available, and the lines after it nothing.
        t_start = np.flatnonzero(t_first)
        t_run = np.cumsum(t_first) - 1
        left = (after_take - first_units)[t_start][t_run]  # head before the later lines
        ask = np.where(~t_first & t_bo, capped[tail], 0)
        asked_before = _grouped_cumsum(ask, t_start, t_run) - ask
        t_head = np.where(t_first, after_take, left - asked_before)  # before the line's units
        atp_end = np.maximum(0, t_head + t_due)
        refused = (ask > 0) & (atp_end < np.maximum(t_low, ask))
        refusals = _grouped_cumsum(refused.astype(np.int64), t_start, t_run)
        units = np.where(
            refusals == 0,
            ask,
            np.where(refused & (refusals == 1) & (atp_end >= t_low), atp_end, 0),
        )
        units = np.where(t_first, first_units, units)
        backordered[tail] = units

        # Promise: the first due day with t_head + inbound due >= max(min_available, units).
        got = np.flatnonzero(units > 0)
        need = np.maximum(1, np.maximum(t_low[got], units[got]) - t_head[got])
        promise.append((tail[got], *late.promise(c[tail[got]], s[tail[got]], need)))

    # Stock locations (first fit, else split), with the backorder reservations: those of
    # lines that took in full come before the next line's take; after the first short line
    # no line takes stock, so the others go last.
    index = lines.index[at]
    if promise:
        promised, day, location = (np.concatenate(part) for part in zip(*promise, strict=True))
    else:
        promised = day = location = np.zeros(0, dtype=np.int64)
    early_units = ~short[promised]
    if early_units.any():
        reserve = np.zeros(at.size, dtype=np.int64)
        reserve_at = np.zeros(at.size, dtype=np.int64)
        reserve[promised[early_units]] = backordered[promised[early_units]]
        reserve_at[promised[early_units]] = location[early_units]
        _place_runs(order, c, s, g, take, unreserved, index, out.taken, (reserve, reserve_at))
        last = ~early_units
        np.subtract.at(unreserved, (s[promised[last]], location[last]), backordered[promised[last]])
    else:
        _place_runs(order, c, s, g, take, unreserved, index, out.taken)
        np.subtract.at(unreserved, (s[promised], location), backordered[promised])
    out.take[index] = take
    out.backordered[index] = backordered
    out.promise_day[index[promised]] = day
    out.promise_location[index[promised]] = location


def _pairs(supply: Supply, network: Network, c: Ints, s: Ints) -> Bools:
    """(C, S) True at each (c, s) given."""
    pairs = np.zeros((len(network.channels), supply.n_skus), dtype=np.bool_)
    pairs[c, s] = True
    return pairs


def _place_runs(
    order: _PreferenceOrder,
    c: Ints,
    s: Ints,
    g: Ints,
    take: Ints,
    unreserved: Ints,
    index: Ints,
    taken: Ints,
    reserve: tuple[Ints, Ints] | None = None,
) -> None:
    """Place each line's take (first fit, else split), writing ``taken[index]`` and taking
    the units off ``unreserved`` (S, L). ``reserve``, (units, location) per line, is reserved
    right after the line's take (only for lines that take stock).

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
            if reserve is not None:
                units, where = reserve[0][pending[shared]], reserve[1][pending[shared]]
                wanted[rows, where] += units
            in_run = start[shared]
            intake = _grouped_cumsum(wanted, np.flatnonzero(in_run), np.cumsum(in_run) - 1)
            used = intake[rows, fit[shared]]
            if reserve is not None:  # the line's own reservation comes after its take
                used -= np.where(where == fit[shared], units, 0)
            free = unreserved[ps[shared], fit[shared]]
            ok[shared] &= used <= free
        failed = _grouped_cumsum(
            (~ok).astype(np.int64), np.flatnonzero(start), np.cumsum(start) - 1
        )
        settled = np.flatnonzero(failed == 0)
        first_failed = ~ok & (failed == 1)  # the first line after the settled prefix
        exact = np.flatnonzero(first_failed)
        taken[index[pending[settled]], fit[settled]] = t[settled]
        np.subtract.at(unreserved, (ps[settled], fit[settled]), t[settled])
        if reserve is not None:
            line = pending[settled]
            np.subtract.at(unreserved, (ps[settled], reserve[1][line]), reserve[0][line])
        if exact.size:
            es = ps[exact]  # one line per run, so distinct skus
            placed = order.place(pc[exact], unreserved[es], t[exact])
            taken[index[pending[exact]]] = placed
            unreserved[es] -= placed
            if reserve is not None:
                line = pending[exact]
                unreserved[es, reserve[1][line]] -= reserve[0][line]
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
        # offer(max(0, value)) is 0 for every value below max(1, min_available), or always
        # with max_available 0.
        least = np.where(
            network.max_available[c] > 0, np.maximum(1, network.min_available[c]), NO_CAP
        )
        idle = head < least
        idle_bo = np.flatnonzero(idle & lines.backorder[pending])
        due = inbound.total(c[idle_bo], s[idle_bo])
        idle[idle_bo] = (due == 0) | (head[idle_bo] + due < least[idle_bo])
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
            network,
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
    network: Network,
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
    low, high = network.min_available[c], network.max_available[c]
    wanted = np.minimum(q, network.max_order_quantity[c])
    value = available_to_sell(net, ss)
    take = np.where(value < low, 0, np.minimum(np.minimum(wanted, high), value))
    taken = order.place(c, seen, take)
    row = taken
    backordered = np.zeros(n, dtype=np.int64)
    promise_day = np.full(n, NONE, dtype=np.int64)
    promise_location = np.full(n, NONE, dtype=np.int64)
    short = np.flatnonzero(backorder & (take < wanted))
    if short.size:
        head = (net - take - ss)[short]  # > 0 only where the channel's buffers held stock back
        due = inbound.total(c[short], s[short])
        # What offer() gives of atp at the end of the horizon caps the backorder.
        end = np.maximum(0, head + due)
        units = np.where(
            (due > 0) & (end >= low[short]),
            np.minimum(np.minimum((wanted - take)[short], high[short]), end),
            0,
        )
        promised = units > 0
        lines, units, head = short[promised], units[promised], head[promised]
        # The first due day with head + inbound due by then >= max(min_available, units).
        need = np.maximum(1, np.maximum(low[lines], units) - head)
        day, location = inbound.promise(c[lines], s[lines], need)
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
