"""The lease's rules (pure): a holder stops before the database could hand its lease
to another, renews in time, and configurations that leave no room are refused."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from coordinator.cluster import lease

times = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)
ttls = st.floats(min_value=0.1, max_value=3600.0, allow_nan=False)


@given(sent=times, ttl=ttls, delay=st.floats(min_value=0.0, max_value=60.0))
def test_the_local_deadline_comes_before_the_databases_expiry(
    sent: float, ttl: float, delay: float
) -> None:
    # The statement reaches the database `delay` after it was sent (as measured on our
    # clock): the database's expiry is then sent + delay + ttl, never before our deadline,
    # with at least the margin in hand, even on a database clock running 1% fast.
    expiry_on_our_clock = sent + delay + ttl * (1 - lease.MAX_CLOCK_DRIFT)
    assert lease.deadline(sent, ttl) <= expiry_on_our_clock - lease.MIN_MARGIN_S + 1e-6


@given(now=times, ttl=ttls)
def test_a_tenure_is_lost_at_its_deadline_and_never_before(now: float, ttl: float) -> None:
    tenure = lease.Tenure(3, lease.deadline(now, ttl))
    assert not lease.lost(now, tenure) or ttl <= lease.margin(ttl)
    assert lease.lost(tenure.deadline, tenure)
    assert lease.lost(now, None)


@given(first=times, later=st.floats(min_value=0.0, max_value=100.0), ttl=ttls)
def test_a_renewal_only_ever_extends_and_keeps_the_epoch(
    first: float, later: float, ttl: float
) -> None:
    tenure = lease.Tenure(7, lease.deadline(first + later, ttl))
    again = lease.renewed(tenure, first, ttl)  # a late answer to an older renewal
    assert again.epoch == 7 and again.deadline == tenure.deadline
    newer = lease.renewed(lease.Tenure(7, lease.deadline(first, ttl)), first + later, ttl)
    assert newer.deadline == lease.deadline(first + later, ttl)


@given(
    now=times,
    since=st.floats(min_value=0.0, max_value=100.0),
    renew=st.floats(min_value=0.1, max_value=30.0),
)
def test_the_loop_wakes_for_the_next_renewal_or_the_deadline(
    now: float, since: float, renew: float
) -> None:
    last = now - since
    idle = lease.wait_s(now, last, renew, None)
    assert idle == max(0.0, last + renew - now)
    near = lease.Tenure(1, now + renew / 4)
    assert lease.wait_s(now, last, renew, near) <= renew / 4 + 1e-9


def test_defaults_and_refused_configurations() -> None:
    assert lease.problems(lease.DEFAULT_TTL_S, lease.DEFAULT_RENEW_S) == []
    assert lease.problems(10.0, 5.0) != []  # one missed renewal would lose the lease
    assert lease.problems(0.0, 1.0) != []
    assert lease.problems(10.0, 0.0) != []
    assert lease.problems(2.0, 0.5) == []
