"""The broker's kill -9 window, as the failure tests recognise it (README, failure table,
"The broker dies and restarts": Known window).

A broker killed after it handed one event's batches to ZeroMQ for some gateways, but before
the others were written, loses those others' copies: the sender's gateway got its answer,
so nothing is sent again. Such a loss has one shape, and only that shape is set apart from
the losses the tests fail on:

- the message reached the sender's own gateway (someone there got it: the sender's own
  copy counts);
- it is missing at a gateway other than the sender's;
- it is missing at *every* live receiver of that gateway (a batch is per gateway: a copy
  lost for one member and shown to another of the same gateway is a bug, not the window);
- and only when the test killed a broker, and at most `WINDOW_SHARE` of the deliveries due.

Its other shape (`late_copies`): when the sender's gateway's pipe was backed up, the broker
may have written another gateway's copy and not the sender's; the sender's event is sent
again and replayed, so nothing is lost, but the sender's gateway shows the message late,
after later ones, to every receiver it has. Only that order difference is set apart: one
order per gateway, and the messages out of place each later at their sender's own gateway.

`set_apart` bounds both shapes together by the share: every verdict on a broker kill (the
chaos suite's and the load's of the failure tests) sets apart through it, and only there.

Pure: receivers are named by any hashable value, gateways by any value (a port, say).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

R = TypeVar("R", bound=Hashable)  # a receiver
K = TypeVar("K", bound=Hashable)  # a message

WINDOW_SHARE = 0.01  # of the deliveries due: more than this is not the window, whatever the shape


def set_apart(shaped: int, late: int, due: int) -> tuple[int, int]:
    """What a verdict on a broker kill sets apart as the window -> (missing copies, late copies).

    `shaped`: the missing copies of the window's shape (`window_shaped`); `late`: the late copies
    that explain the receivers' different orders (`late_copies`, over the rooms whose orders
    differ only so); `due`: the deliveries due in all. The missing copies are set apart if they
    are at most `WINDOW_SHARE` of `due`, the late ones if, with them, all are. A late count of 0
    returned: the order differences are not the window's, and count as mismatches."""
    lost = within_share(shaped, due)
    return lost, late if late and within_share(lost + late, due) else 0


def within_share(count: int, due: int) -> int:
    """`count` if it is at most `WINDOW_SHARE` of `due` deliveries, else 0 (none set apart)."""
    return count if count <= WINDOW_SHARE * due else 0


def window_shaped(missing: Mapping[R, set[K]], got: Mapping[R, set[K]],
                  gateway: Mapping[R, object], origin: Mapping[K, object]) -> int:
    """How many of the missing copies (`missing[receiver]`: message keys) have the window's
    shape, however many (`set_apart` bounds them).

    `got[receiver]`: the keys it got; `gateway[receiver]`: the gateway it is on;
    `origin[key]`: the gateway of the message's sender."""
    on_gateway: dict[object, list[R]] = defaultdict(list)
    for receiver in gateway:
        on_gateway[gateway[receiver]].append(receiver)
    count = 0
    for receiver, keys in missing.items():
        here = gateway[receiver]
        for key in keys:
            home = origin[key]
            if here == home:
                continue
            if not all(key not in got[other] for other in on_gateway[here]):
                continue  # shown to another member of the same gateway: not a lost batch
            if not any(key in got[other] for other in on_gateway[home]):
                continue  # never shown at the sender's gateway: not published at all
            count += 1
    return count


def late_copies(orders: Mapping[R, Sequence[K]], gateway: Mapping[R, object],
                origin: Mapping[K, object]) -> int | None:
    """The window's other shape: how many copies came late, or None if the receivers' different
    orders of one room are not that.

    When the sender's gateway's pipe was backed up, the killed broker may have written another
    gateway's copy of a batch and not the sender's: the sender's event is sent again and
    replayed, and reaches its own gateway late, after later messages. So: every receiver of a
    gateway saw one order (a batch is per gateway); two gateways' orders differ only by
    messages that come later at the gateway of their sender than at the other one.
    `orders[receiver]`: the message keys in the order it got them; `gateway`, `origin` as in
    `window_shaped`. -> the late copies (one per receiver of the late gateway that got it)."""
    by_gateway: dict[object, list[Sequence[K]]] = defaultdict(list)
    for receiver, order in orders.items():
        by_gateway[gateway[receiver]].append(order)
    for seen in by_gateway.values():
        if any(not _agree(seen[0], other) for other in seen[1:]):
            return None  # two members of one gateway saw different orders: not a per-gateway batch
    views = {g: max(seen, key=len) for g, seen in by_gateway.items()}
    late: set[tuple[object, K]] = set()  # (the gateway it came late at, the message)
    names = list(views)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            moved = _moved(views[a], views[b], a, b, origin)
            if moved is None:
                return None
            late |= moved
    return sum(sum(1 for order in by_gateway[g] if key in order) for g, key in late)


def _agree(one: Sequence[K], other: Sequence[K]) -> bool:
    common = set(one) & set(other)
    return [k for k in one if k in common] == [k for k in other if k in common]


def _moved(a: Sequence[K], b: Sequence[K], ga: object, gb: object,
           origin: Mapping[K, object]) -> set[tuple[object, K]] | None:
    """The messages outside the longest order `a` and `b` share, each later at its sender's
    gateway than at the other -> {(that gateway, message)}; None if one of them is not."""
    common = set(a) & set(b)
    xs, ys = [k for k in a if k in common], [k for k in b if k in common]
    if xs == ys:
        return set()
    kept = _longest_common(xs, ys)
    moved: set[tuple[object, K]] = set()
    for key in common - kept:
        home = origin[key]
        before_a = sum(1 for k in xs[:xs.index(key)] if k in kept)
        before_b = sum(1 for k in ys[:ys.index(key)] if k in kept)
        if home == ga and before_a > before_b:
            moved.add((ga, key))
        elif home == gb and before_b > before_a:
            moved.add((gb, key))
        else:
            return None  # out of place where its sender is not, or not later: not this shape
    return moved


def _longest_common(xs: Sequence[K], ys: Sequence[K]) -> set[K]:
    """The keys of a longest common subsequence of two orders of the same keys."""
    rows = [[0] * (len(ys) + 1) for _ in range(len(xs) + 1)]
    for i in range(len(xs) - 1, -1, -1):
        for j in range(len(ys) - 1, -1, -1):
            rows[i][j] = rows[i + 1][j + 1] + 1 if xs[i] == ys[j] else max(rows[i + 1][j], rows[i][j + 1])
    kept: set[K] = set()
    i = j = 0
    while i < len(xs) and j < len(ys):
        if xs[i] == ys[j]:
            kept.add(xs[i])
            i, j = i + 1, j + 1
        elif rows[i + 1][j] >= rows[i][j + 1]:
            i += 1
        else:
            j += 1
    return kept
