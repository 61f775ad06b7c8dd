"""The hub URLs a coordinator hands enrolling agents (#23)."""

from __future__ import annotations

from coordinator.config import advertised_hub_urls

A, B, C = (f"wss://{h}:7443/agent/v1" for h in "abc")


def test_a_coordinator_advertises_itself_first_keeping_the_fleets_cycle() -> None:
    assert advertised_hub_urls(A, []) == [A], "default: this coordinator alone"
    assert advertised_hub_urls(B, [A, B, C]) == [B, C, A]
    assert advertised_hub_urls(C, [A, B, C, A]) == [C, A, B]
    assert advertised_hub_urls("wss://10.0.0.1:7443/agent/v1", [A, B])[1:] == [A, B]
