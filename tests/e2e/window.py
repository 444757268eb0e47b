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

Pure: receivers are named by any hashable value, gateways by any value (a port, say).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Mapping

WINDOW_SHARE = 0.01  # of the deliveries due: more than this is not the window, whatever the shape


def window_losses(missing: Mapping[Hashable, set[Hashable]], got: Mapping[Hashable, set[Hashable]],
                  gateway: Mapping[Hashable, object], origin: Mapping[Hashable, object], due: int) -> int:
    """How many of the missing copies (`missing[receiver]`: message keys) have the window's shape.

    `got[receiver]`: the keys it got; `gateway[receiver]`: the gateway it is on;
    `origin[key]`: the gateway of the message's sender; `due`: the deliveries due in all.
    -> the count to set apart, 0 if more than `WINDOW_SHARE` of `due` would be."""
    return within_share(window_shaped(missing, got, gateway, origin), due)


def within_share(count: int, due: int) -> int:
    """`count` if it is at most `WINDOW_SHARE` of `due` deliveries, else 0 (none set apart)."""
    return count if count <= WINDOW_SHARE * due else 0


def window_shaped(missing: Mapping[Hashable, set[Hashable]], got: Mapping[Hashable, set[Hashable]],
                  gateway: Mapping[Hashable, object], origin: Mapping[Hashable, object]) -> int:
    """The missing copies of the window's shape, however many (see `window_losses`)."""
    on_gateway: dict[object, list[Hashable]] = defaultdict(list)
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
