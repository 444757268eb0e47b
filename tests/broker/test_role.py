"""The lease as a broker sees it (broker.role): pure, time is a value."""

from __future__ import annotations

import pytest

from broker.role import AlwaysActive, Role


def test_a_broker_without_a_lease_is_a_standby() -> None:
    role = Role(ttl=3.0)
    assert not role.active(0.0) and not role.expired(0.0) and role.epoch == 0


def test_acquiring_makes_it_active_until_the_margin_before_the_lease_ends() -> None:
    role = Role(ttl=3.0)  # margin: a third, 1 s
    assert role.renewed(7, asked=10.0)
    assert role.active(10.0) and role.active(11.99)
    assert not role.active(12.0) and role.expired(12.0)  # stops 1 s before anyone else may take it


def test_renewals_extend_it_from_when_they_were_asked() -> None:
    role = Role(ttl=3.0)
    role.renewed(1, asked=0.0)
    assert not role.renewed(1, asked=1.0)  # the same epoch: not a new activation
    assert role.active(2.9) and not role.active(3.0)
    role.renewed(1, asked=0.5)  # an answer that took long: an older request does not move it back
    assert role.active(2.9)


def test_a_frozen_broker_is_not_active_when_it_wakes() -> None:
    role = Role(ttl=0.6)
    role.renewed(3, asked=100.0)
    assert not role.active(100.0 + 5.0)  # SIGSTOP for 5 s: the clock ran on


def test_losing_the_lease_makes_it_a_standby_and_a_new_epoch_is_a_new_activation() -> None:
    role = Role(ttl=3.0)
    role.renewed(1, asked=0.0)
    assert role.lost() and not role.active(0.1) and role.epoch == 0
    assert not role.lost()  # a standby told again: nothing changes
    assert role.renewed(2, asked=5.0) and role.epoch == 2


@pytest.mark.parametrize("margin", [0.0, 3.0, -1.0])
def test_the_margin_must_leave_time_to_serve(margin: float) -> None:
    with pytest.raises(ValueError):
        Role(ttl=3.0, margin=margin)


def test_an_epoch_starts_at_one() -> None:
    with pytest.raises(ValueError):
        Role(ttl=3.0).renewed(0, asked=0.0)


def test_a_lone_broker_is_always_active_under_epoch_zero() -> None:
    role = AlwaysActive()
    assert role.active(1e9) and not role.expired(1e9) and role.epoch == 0
