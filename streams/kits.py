"""Kits' read documents from their components' states (contract section 10). Pure.

Every write of a sku that is a component of a kit marks the kit due (the write script,
atp_service/store/write.lua), and the sweep computes the kit here from the components'
current states. Its write is refused if one of those components moved meanwhile, so a
kit's stored value follows its components' latest states within a sweep interval, and the
last value announced for a (channel, kit) is the current one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec

from allocation.kits import KitDefinition, kit_figures
from streams.projector import Projector
from streams.state import KitDocuments, SkuState


def components_of(definitions: Mapping[str, KitDefinition]) -> list[str]:
    """Every component sku of these kits, each once."""
    return list(dict.fromkeys(c.sku for kit in definitions.values() for c in kit.components))


def with_kits(
    states: Sequence[SkuState],
    definitions: Mapping[str, KitDefinition],
    components: Mapping[str, SkuState],
    projector: Projector,
    now_us: int,
) -> list[SkuState]:
    """``states`` with each kit's documents computed from ``components`` (sku -> state),
    and the documents of a sku that is no longer a kit dropped."""
    figures = projector.figures(list(components.values()), now_us) if definitions else {}
    channels = list(enumerate(projector.network.channels))
    out = []
    for state in states:
        kit = definitions.get(state.sku)
        if kit is None:
            out.append(msgspec.structs.replace(state, kit=None) if state.kit else state)
            continue
        mine = kit_figures([(figures[c.sku], c.quantity) for c in kit.components])
        documents = {
            name: projector.document(name, kit.sku, mine, c, now_us) for c, name in channels
        }
        ats = {name: mine.available_to_sell[c] for c, name in channels}
        out.append(msgspec.structs.replace(state, kit=KitDocuments(documents, ats, now_us)))
    return out
