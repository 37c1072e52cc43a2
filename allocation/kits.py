"""Kits (contract section 10): a sku sold as a set of component skus.

A kit has no stock of its own. Per channel its figures follow from its components':

    available_to_sell(c, kit) = min over components of floor(available_to_sell(c, j) / q_j)
    on_hand(c, kit)           = min over components of floor(on_hand(c, j) / q_j)
    atp(c, kit, d)            = min over components of floor(atp(c, j, d) / q_j)

where a component's atp on day d is the value its timeline lists for the latest day up to
d, or its available_to_sell when no inbound is due by then. The kit's timeline lists every
day any component's timeline lists. ``reserved`` and ``safety_stock`` read 0: the
components carry them. This module is the one place those formulas are written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Final

import msgspec

MAX_COMPONENTS: Final = 50
MAX_COMPONENT_QUANTITY: Final = 1000


class KitComponent(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    sku: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    quantity: Annotated[int, msgspec.Meta(ge=1, le=MAX_COMPONENT_QUANTITY)]


class KitDefinition(msgspec.Struct, frozen=True):
    sku: str
    components: tuple[KitComponent, ...]


class KitRefused(ValueError):
    """A kit definition the contract does not allow; the message says why."""


class KitRules:
    """The rules a kit definition must keep beside ``others`` (the kits in force, by sku; a
    definition of the same sku there is the one being replaced). Built once for many
    checks: each check is then as long as the kit, not as the list of kits."""

    def __init__(self, others: Mapping[str, KitDefinition]) -> None:
        self.others = others
        # component sku -> the kits it belongs to, in the order of ``others``
        self.part_of: dict[str, list[str]] = {}
        for other in others.values():
            for c in other.components:
                self.part_of.setdefault(c.sku, []).append(other.sku)

    def check(self, kit: KitDefinition) -> None:
        """Raise KitRefused unless ``kit`` may be defined."""
        if not 1 <= len(kit.components) <= MAX_COMPONENTS:
            raise KitRefused(f"a kit has 1 to {MAX_COMPONENTS} components")
        listed = [c.sku for c in kit.components]
        if len(set(listed)) != len(listed):
            raise KitRefused("a component is listed twice")
        for c in kit.components:
            if c.sku == kit.sku or (c.sku in self.others and c.sku != kit.sku):
                raise KitRefused(f"component {c.sku!r} is itself a kit")
        owner = next((k for k in self.part_of.get(kit.sku, ()) if k != kit.sku), None)
        if owner is not None:
            raise KitRefused(f"{kit.sku!r} is a component of kit {owner!r}")


def check_kit(kit: KitDefinition, others: Mapping[str, KitDefinition]) -> None:
    """``KitRules(others).check(kit)``, for one check."""
    KitRules(others).check(kit)


@dataclass(frozen=True)
class Figures:
    """One sku's figures per channel (lists indexed like the network's channels).

    Attributes:
        timeline: per channel, (day since epoch, atp) entries by ascending day.
    """

    available_to_sell: list[int]
    on_hand: list[int]
    timeline: list[list[tuple[int, int]]]


def kit_figures(components: Sequence[tuple[Figures, int]]) -> Figures:
    """A kit's figures from its components' (figures, quantity per kit)."""
    n_channels = len(components[0][0].available_to_sell)
    ats = [min(f.available_to_sell[c] // q for f, q in components) for c in range(n_channels)]
    on_hand = [min(f.on_hand[c] // q for f, q in components) for c in range(n_channels)]
    timeline = [_kit_timeline(components, c) for c in range(n_channels)]
    return Figures(ats, on_hand, timeline)


def _kit_timeline(components: Sequence[tuple[Figures, int]], c: int) -> list[tuple[int, int]]:
    days = sorted({day for f, _ in components for day, _ in f.timeline[c]})
    if not days:
        return []
    # Walk every component's timeline once, in step with the union of days.
    position = [0] * len(components)
    value = [f.available_to_sell[c] for f, _ in components]
    out = []
    for day in days:
        for j, (f, _) in enumerate(components):
            entries = f.timeline[c]
            while position[j] < len(entries) and entries[position[j]][0] <= day:
                value[j] = entries[position[j]][1]
                position[j] += 1
        out.append((day, min(v // q for v, (_, q) in zip(value, components, strict=True))))
    return out
