"""Which broker of a pair is active, as the gateway hears them. Pure: time is a value.

Every broker heartbeats the gateway on its own DEALER link, saying its epoch
and whether it is active (a standby is not; a lone broker is always active,
under epoch 0). The active broker is the one heard within the liveness window
that says it is active, under the highest epoch: a deposed broker that has not
noticed yet loses to its successor, and one that has noticed says standby.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.messages import Heartbeat


@dataclass(frozen=True, slots=True)
class Heard:
    at: float
    name: str
    epoch: int
    active: bool


class BrokerChoice:
    def __init__(self, brokers: int, window: float) -> None:
        if brokers < 1:
            raise ValueError("at least one broker")
        self.window = window
        self._heard: list[Heard | None] = [None] * brokers

    def heard(self, index: int, beat: Heartbeat, now: float) -> None:
        self._heard[index] = Heard(now, beat.sender, beat.epoch, beat.active)

    def active(self, now: float) -> int | None:
        """The index of the active broker, or None while none is heard saying so."""
        best: int | None = None
        for index, heard in enumerate(self._heard):
            if heard is None or not heard.active or now - heard.at > self.window:
                continue
            chosen = self._heard[best] if best is not None else None
            if chosen is None or heard.epoch > chosen.epoch:
                best = index
        return best

    def identity(self, index: int) -> tuple[int, str, int]:
        """What changes when another broker (or a restarted one) becomes the active one."""
        heard = self._heard[index]
        assert heard is not None
        return index, heard.name, heard.epoch
