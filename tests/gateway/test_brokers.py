"""Which broker of a pair the gateway follows (gateway.brokers): pure, time is a value."""

from __future__ import annotations

from gateway.brokers import BrokerChoice
from protocol.messages import Heartbeat


def test_a_lone_broker_is_followed_while_heard() -> None:
    choice = BrokerChoice(1, window=3.0)
    assert choice.active(0.0) is None
    choice.heard(0, Heartbeat("broker.a"), 1.0)
    assert choice.active(1.0) == 0 and choice.active(4.0) == 0
    assert choice.active(4.1) is None  # silent past the window
    assert choice.identity(0) == (0, "broker.a", 0)


def test_a_standby_is_never_chosen() -> None:
    choice = BrokerChoice(2, window=3.0)
    choice.heard(0, Heartbeat("broker.a", 0, False), 0.0)
    choice.heard(1, Heartbeat("broker.b", 4, True), 0.0)
    assert choice.active(0.0) == 1


def test_the_highest_epoch_wins_when_two_say_active() -> None:
    choice = BrokerChoice(2, window=3.0)
    choice.heard(0, Heartbeat("broker.a", 5, True), 0.0)  # deposed, has not noticed yet
    choice.heard(1, Heartbeat("broker.b", 6, True), 0.5)
    assert choice.active(1.0) == 1
    choice.heard(0, Heartbeat("broker.a", 5, True), 2.0)
    assert choice.active(2.0) == 1


def test_the_successor_is_followed_once_the_dead_one_is_out_of_the_window() -> None:
    choice = BrokerChoice(2, window=3.0)
    choice.heard(0, Heartbeat("broker.a", 1, True), 0.0)
    choice.heard(1, Heartbeat("broker.b", 0, False), 0.0)
    assert choice.active(1.0) == 0
    choice.heard(1, Heartbeat("broker.b", 2, True), 3.5)  # took over after the lease ran out
    assert choice.active(3.5) == 1
    assert choice.identity(1) == (1, "broker.b", 2)


def test_a_restarted_broker_is_another_identity() -> None:
    choice = BrokerChoice(1, window=3.0)
    choice.heard(0, Heartbeat("broker.a"), 0.0)
    before = choice.identity(0)
    choice.heard(0, Heartbeat("broker.z"), 1.0)
    assert choice.identity(0) != before
