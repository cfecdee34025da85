"""Spare routes: a frontend and a backend declared before any environment needs them, so
that a new environment's route is a saved assignment instead of an HAProxy reload.

HAProxy 2.6 cannot create a frontend or a backend at runtime (servers, yes: ``add
server``), and a reload re-reads every route: with a thousand routes the first promote of
an environment paid for all of them. So a reload that has to happen (a route removed, a
port given by hand, the pool empty) also declares a batch of spare slots, each a frontend
bound to a free port of the range and an empty backend, ``fe.<slot>`` / ``be.<slot>``. A
new route takes one: its saved state names the slot, its servers come through the runtime
API like any route's, and every config written later (a reload, a start) names it the same
way, so the running worker, the next one and old ones finishing requests agree on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from shipway.router.base import RouterError
from shipway.router.state import (
    DesiredState,
    RouteState,
    SparePool,
    allocate_port,
    bindable,
)

log = logging.getLogger(__name__)

SPARE_MIN = 4  # a small router's batch (few ports held for nothing)
SPARE_SHARE = 8  # else one spare per 8 routes, up to the router's most (64 by default)


def batch_size(routes: int, most: int) -> int:
    """How many spares a reload declares when the pool is empty (0: no pool)."""
    return min(most, max(SPARE_MIN, routes // SPARE_SHARE))


def take(pool: SparePool, port: int = 0) -> RouteState | None:
    """A route on a spare slot of ``pool``, removed from it (the one on ``port`` if given,
    else the oldest); None if no spare fits."""
    if port:
        slot = next((s for s, p in pool.slots.items() if p == port), None)
    else:
        slot = min(pool.slots, default=None)
    if slot is None:
        return None
    return RouteState(listen_port=pool.slots.pop(slot), slot=slot)


def grow(
    state: DesiredState, count: int, *, bind_host: str, port_range: tuple[int, int]
) -> list[int]:
    """Declare up to ``count`` new spares on free ports (fewer if the range runs out); the
    new slots."""
    taken, added = ports_in_use(state), []
    for _ in range(count):
        try:
            port = allocate_port(bind_host, port_range, taken)
        except RouterError:
            break  # a full range: routes still get ports one reload at a time
        added.append(state.spares.next_slot)
        state.spares.slots[state.spares.next_slot] = port
        state.spares.next_slot += 1
        taken.add(port)
    return added


def apply_with_spares(
    state: DesiredState,
    apply: Callable[[DesiredState], None],
    most: int,
    bind_host: str,
    port_range: tuple[int, int],
) -> None:
    """``apply`` (a reload) ``state``, its pool given a batch (of ``most`` spares at most)
    first if it is empty.

    A spare's port is only probed free: another router sharing the range (or anything
    else) may bind it before HAProxy does, and the reload fails. A spare is optional, so
    the reload is tried once more without the new ones (the pool grows at the next
    reload); a failure then is not theirs and is raised.
    """
    added: list[int] = []
    if not state.spares.slots and most > 0:
        size = batch_size(len(state.routes), most)
        added = grow(state, size, bind_host=bind_host, port_range=port_range)
    try:
        apply(state)
    except RouterError as exc:
        if not added:
            raise
        log.warning(
            "router: reload with %d new spares failed, again without them: %s", len(added), exc
        )
        for slot in added:
            del state.spares.slots[slot]
        apply(state)


def ports_in_use(state: DesiredState) -> set[int]:
    """Every port of a route or a spare of ``state``."""
    return {r.listen_port for r in state.routes.values()} | set(state.spares.slots.values())


def frontends(state: DesiredState) -> dict[str, int]:
    """Every frontend of the config of ``state`` and its port: equal for two states, the
    same config declares both (servers aside), so going from one to the other needs no
    reload."""
    ours = {route.frontend(key): route.listen_port for key, route in state.routes.items()}
    return ours | {f"fe.{slot}": port for slot, port in state.spares.slots.items()}


def backends(state: DesiredState) -> set[str]:
    """Every backend of the config of ``state``."""
    ours = {route.backend(key) for key, route in state.routes.items()}
    return ours | {f"be.{slot}" for slot in state.spares.slots}


def is_route_backend(name: str) -> bool:
    """Whether an HAProxy backend is a route's or a spare's (not the shared ones)."""
    return name.startswith(("be_", "be."))


def drop_unbindable(pool: SparePool, *, bind_host: str) -> bool:
    """Before a start: forget the spares whose port something else took while HAProxy was
    down (HAProxy would not start); whether any was. Routes keep theirs: they fail loudly."""
    held = {slot for slot, port in pool.slots.items() if not bindable(bind_host, port)}
    for slot in held:
        del pool.slots[slot]
    return bool(held)
