"""Orders allocated one after another, as plain loops: the single-order path of the API.

``allocation.allocate`` allocates a batch in one vectorized call, lines of higher-priority
channels first. An order router's single orders arrive one at a time, and a group of them
written together must each get what it would have got alone, in arrival order. For one
order (one channel) both give the same answer; this path has no per-call numpy cost, which
dominates for a handful of lines. The property tests hold the two equal.

Supply comes from ``Projector.supply``, the one function that gathers it from raw states.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from allocation.network import NO_CAP, NONE, Network, Supply
from allocation.projection import offer


@dataclass(frozen=True)
class Line:
    channel: int  # index into the network's channels
    sku: int  # row of the supply
    quantity: int
    backorder: bool


@dataclass
class Outcomes:
    """Per line, in the order given: what ``allocate`` reports for it, as lists."""

    taken: list[list[int]] = field(default_factory=list)  # per network location
    backordered: list[int] = field(default_factory=list)
    promise_day: list[int] = field(default_factory=list)
    promise_location: list[int] = field(default_factory=list)
    unfilled: list[int] = field(default_factory=list)
    # Units taken per network location over all lines, when the engine counted them.
    totals: list[int] | None = None


@dataclass(frozen=True)
class KitLine:
    """A line for a kit (contract section 10): whole kits only, each taking ``per_kit``
    units of every component; never backordered."""

    channel: int
    components: tuple[tuple[int, int], ...]  # (sku row, units per kit)
    quantity: int  # kits


Due = list[tuple[int, int, int]]  # (day, inbound due by that day, location of a line due)


def allocate_in_turn(
    supply: Supply,
    network: Network,
    today: int,
    lines: Sequence[Line | KitLine],
    capacity: Sequence[int] | None = None,
) -> Outcomes | None:
    """Allocate ``lines`` one after another, each on what the ones before it left. A kit
    line has an outcome per component, in the order of its components. ``capacity``: per
    network location, the units it may still give today (contract section 11), shared by
    every line and sku; stock taken beyond it is passed over as if there were none.

    Returns None for input the engine refuses (a quantity under 1, an unknown channel, a
    negative safety stock); ``allocate`` on the same input raises the error to report.
    """
    n_channels = len(network.channels)
    if any(q < 0 for row in supply.safety_stock.tolist() for q in row):
        return None
    unreserved: list[list[int]] = (supply.on_hand - supply.reserved).tolist()
    safety: list[list[int]] = supply.safety_stock.tolist()
    by_preference = preferred(network)
    timelines = Timelines(supply, network, today, by_preference)
    low: list[int] = network.min_available.tolist()
    high: list[int] = network.max_available.tolist()
    cap: list[int] = network.max_order_quantity.tolist()
    out = Outcomes()
    n_locations = len(network.locations)
    room = list(capacity) if capacity is not None else None
    for line in lines:
        if isinstance(line, KitLine):
            if not 0 <= line.channel < n_channels:
                return None
            locations = by_preference[line.channel]
            offers = (low, high, cap)
            if not _take_kits(line, unreserved, safety, locations, offers, room, out):
                return None
            continue
        c, s, quantity = line.channel, line.sku, line.quantity
        if quantity < 1 or not 0 <= c < n_channels or not 0 <= s < len(unreserved):
            return None
        locations, free, ss = by_preference[c], unreserved[s], safety[s][c]
        wanted = min(quantity, cap[c])  # beyond the channel's order cap: unfilled
        net = sum(free[loc] for loc in locations)
        take = min(
            wanted, offer(max(0, net - ss), low[c], high[c]), can_give(free, locations, room)
        )
        taken = take_from(free, locations, take, n_locations, room)
        rest = wanted - take
        backordered, day, where = 0, NONE, NONE
        due = timelines.due(c, s) if line.backorder and rest > 0 else []
        if due:
            # atp(c,s,d) after the take = offer(max(0, net - take + inbound due by d - safety)).
            head, lo, hi = net - take - ss, low[c], high[c]
            backordered = min(rest, offer(max(0, head + due[-1][1]), lo, hi))
            if backordered > 0:
                day, where = next(
                    (d, loc)
                    for d, total, loc in due
                    if offer(max(0, head + total), lo, hi) >= backordered
                )
                free[where] -= backordered
        out.taken.append(taken)
        out.backordered.append(backordered)
        out.promise_day.append(day)
        out.promise_location.append(where)
        out.unfilled.append(quantity - take - backordered)
    return out


def _take_kits(
    line: KitLine,
    unreserved: list[list[int]],
    safety: list[list[int]],
    locations: list[int],
    offers: tuple[list[int], list[int], list[int]],
    room: list[int] | None,
    out: Outcomes,
) -> bool:
    """As many whole kits as every component allows on the channel (its available_to_sell
    with the channel's buffers, section 11), capped by the channel's order cap in kits."""
    c, (low, high, cap) = line.channel, offers
    if line.quantity < 1 or not line.components:
        return False
    if any(not 0 <= s < len(unreserved) or per_kit < 1 for s, per_kit in line.components):
        return False
    kits = min(line.quantity, cap[c])
    for s, per_kit in line.components:
        net = sum(unreserved[s][loc] for loc in locations)
        allowed = min(
            offer(max(0, net - safety[s][c]), low[c], high[c]),
            can_give(unreserved[s], locations, room),
        )
        kits = min(kits, allowed // per_kit)
    n_locations = len(unreserved[line.components[0][0]])

    def attempt(k: int) -> tuple[bool, dict[int, list[int]], list[int] | None, list[list[int]]]:
        """Take k kits on copies: whether every component got all of its share."""
        free = {s: list(unreserved[s]) for s, _ in line.components}
        left = list(room) if room is not None else None
        taken = [
            take_from(free[s], locations, k * q, n_locations, left) for s, q in line.components
        ]
        whole = all(sum(t) == k * q for t, (_, q) in zip(taken, line.components, strict=True))
        return whole, free, left, taken

    done = attempt(kits)
    if not done[0]:
        # Components that share a location share its capacity: together they may need more
        # than it has left. The most kits that fit, by bisection (0 always fits).
        fits, too_many = 0, kits
        while too_many - fits > 1:
            middle = (fits + too_many) // 2
            if attempt(middle)[0]:
                fits = middle
            else:
                too_many = middle
        kits, done = fits, attempt(fits)
    _, free, left, taken = done
    for s, _ in line.components:
        unreserved[s][:] = free[s]
    if room is not None and left is not None:
        room[:] = left
    for t, (_, per_kit) in zip(taken, line.components, strict=True):
        out.taken.append(t)
        out.backordered.append(0)
        out.promise_day.append(NONE)
        out.promise_location.append(NONE)
        out.unfilled.append((line.quantity - kits) * per_kit)
    return True


def can_give(free: list[int], locations: Sequence[int], room: list[int] | None) -> int:
    """What ``locations`` can give today within their capacity (``room``, None: no limit)."""
    if room is None:
        return NO_CAP
    return sum(min(max(0, free[loc]), room[loc]) for loc in locations)


def take_from(
    free: list[int],
    locations: Sequence[int],
    take: int,
    n_locations: int,
    room: list[int] | None = None,
) -> list[int]:
    """Per location, the units a line takes from stock (``take`` at most what the channel's
    available_to_sell and ``can_give`` allow): one location that holds it whole, else in
    preference order. ``free`` (unreserved stock per location) and ``room`` (capacity left
    today per location) are reduced by what is taken."""
    taken = [0] * n_locations
    if take <= 0:
        return taken
    for loc in locations:  # a plain loop: this runs per line, a generator costs more
        if free[loc] >= take and (room is None or room[loc] >= take):
            taken[loc] = take
            free[loc] -= take
            if room is not None:
                room[loc] -= take
            return taken
    remaining = take
    for loc in locations:
        part = min(max(0, free[loc]), remaining)
        if room is not None:
            part = min(part, room[loc])
            room[loc] -= part
        taken[loc] = part
        free[loc] -= part
        remaining -= part
    return taken


def preferred(network: Network) -> list[list[int]]:
    """Each channel's locations, in its preference order."""
    out = []
    for ranks in network.rank.tolist():
        out.append([loc for _, loc in sorted((r, loc) for loc, r in enumerate(ranks) if r >= 0)])
    return out


class Timelines:
    """Per (channel, sku), made when first asked: the inbound due within the channel's
    horizon as (day, total due by that day, the preferred location with a line due that
    day), one entry per distinct day, ascending. An eta in the past is due today."""

    def __init__(
        self, supply: Supply, network: Network, today: int, preferred: list[list[int]]
    ) -> None:
        self.today = today
        self.horizon: list[int] = network.horizon.tolist()
        self.position = [{loc: p for p, loc in enumerate(locs)} for locs in preferred]
        self.lines: dict[int, list[tuple[int, int, int]]] = {}
        for s, loc, quantity, eta in zip(
            supply.inbound_sku.tolist(),
            supply.inbound_location.tolist(),
            supply.inbound_quantity.tolist(),
            supply.inbound_eta.tolist(),
            strict=True,
        ):
            if quantity > 0:
                self.lines.setdefault(s, []).append((loc, quantity, eta))
        self._made: dict[tuple[int, int], Due] = {}

    def due(self, c: int, s: int) -> Due:
        found = self._made.get((c, s))
        if found is None:
            found = self._made[c, s] = self._make(c, s)
        return found

    def _make(self, c: int, s: int) -> Due:
        position, end = self.position[c], self.today + self.horizon[c]
        lines = sorted(
            (max(eta, self.today), position[loc], loc, quantity)
            for loc, quantity, eta in self.lines.get(s, ())
            if loc in position and eta <= end
        )
        due: Due = []
        total = 0
        for day, _, loc, quantity in lines:
            total += quantity
            if due and due[-1][0] == day:
                due[-1] = (day, total, due[-1][2])
            else:
                due.append((day, total, loc))
        return due
