"""The fault suite's judgements, on hand-made observations: each rule must be able to
fail, or a green suite would mean nothing."""

from __future__ import annotations

from tests.chaos import invariants as inv

P = {"a.service": frozenset({"m1"}), "g.service": frozenset({"m1", "m2"})}


def snap(
    running: dict[str, dict[str, str]],
    placements: dict[str, frozenset[str]] = P,
    connected: tuple[str, ...] = ("m1", "m2"),
) -> inv.Snapshot:
    return inv.Snapshot(placements, running, frozenset(connected))


RUNNING = {"m1": {"a.service": "i1", "g.service": "g1"}, "m2": {"g.service": "g2"}}
BEFORE = snap(RUNNING)


def test_converged_only_when_every_unit_runs_exactly_where_placed() -> None:
    assert inv.convergence_problems(BEFORE, ["m1", "m2"]) == []
    extra = snap({**RUNNING, "m2": {"g.service": "g2", "a.service": "x"}})
    assert inv.convergence_problems(extra, ["m1", "m2"]) == [
        "a.service active on m2, placed on ['m1']"
    ]
    missing = snap({"m1": {"a.service": "i1"}, "m2": {"g.service": "g2"}}, connected=("m1",))
    assert inv.convergence_problems(missing, ["m1", "m2"]) == [
        "m2 not connected",
        "g.service not active on m1",
    ]


def test_a_new_instance_of_an_unmoved_unit_is_a_wrong_stop() -> None:
    assert inv.wrongly_stopped(BEFORE, BEFORE) == []
    restarted = snap({"m1": {"a.service": "i2", "g.service": "g1"}, "m2": {"g.service": "g2"}})
    assert inv.wrongly_stopped(BEFORE, restarted) == ["a.service on m1: restarted"]
    stopped = snap({"m1": {"g.service": "g1"}, "m2": {"g.service": "g2"}})
    assert inv.wrongly_stopped(BEFORE, stopped) == ["a.service on m1: stopped"]
    # ...unless a release replaced it, the fault power-cycled its machine, or it moved
    assert inv.wrongly_stopped(BEFORE, restarted, replaced=["a.service"]) == []
    assert inv.wrongly_stopped(BEFORE, stopped, spared=["m1"]) == []
    moved = snap(
        {"m1": {"g.service": "g1"}, "m2": {"g.service": "g2", "a.service": "i9"}},
        placements={**P, "a.service": frozenset({"m2"})},
    )
    assert inv.wrongly_stopped(BEFORE, moved) == []


def test_duplicates_and_moves() -> None:
    two = {"m1": {"a.service": "1"}, "m2": {"a.service": "2"}}
    assert inv.duplicates(two, ["a.service"]) == ["a.service on ['m1', 'm2']"]
    assert inv.duplicates(BEFORE.running, ["a.service"]) == []
    assert inv.moved(P, {**P, "a.service": frozenset({"m2"})}) == ["a.service: ['m1'] -> ['m2']"]
    assert inv.moved(P, dict(P)) == []


def test_summary_counts_and_percentiles() -> None:
    ok = inv.RoundResult("s", 1, faults=1, acked_writes=3, converge_s=2.0)
    bad = inv.RoundResult("s", 2, faults=1, duplicates=["x"], converge_s=None)
    assert ok.ok and not bad.ok
    s = inv.summarize("s", [ok, bad])
    assert (s.rounds, s.faults, s.duplicates, s.acked_writes, s.not_converged) == (2, 2, 1, 3, 1)
    assert s.converge_p50_s == s.converge_p99_s == 2.0
    assert inv.percentile([], 50) is None
    assert inv.percentile([float(v) for v in range(1, 101)], 99) == 99.0
    assert "| s | 2 | 2 | 0 | 1 | 3 | 0 | 1 | 0 | 2.0 s | 2.0 s |" in inv.table([s])


def test_a_slot_tells_which_write_of_its_round_it_holds() -> None:
    from tests.chaos.world import ACK_MARK, written_number

    held = [{"section": "Unit", "name": "Description", "value": f"{ACK_MARK}agent-kill-3#17"}]
    assert written_number(held, "agent-kill-3") == 17
    assert written_number(held, "agent-kill-4") == -1  # an older round's write
    assert written_number([], "agent-kill-3") == -1


def test_webops_serving_allows_only_old_a_short_switch_then_new() -> None:
    from tests.chaos.webops import GAP_MAX_S, judge_serving

    def ok(*seq: tuple[int, int | None]) -> list[tuple[float, int, int | None]]:
        return [(i * 0.1, status, version) for i, (status, version) in enumerate(seq)]

    switch = ok((200, 1), (502, None), (502, None), (200, 2), (200, 2))
    problems, summary = judge_serving(switch, 1, 2)
    assert problems == [] and "2 failed (502 x2)" in summary
    # The live build taken away mid-build (a repeated build over its directory: #25)
    problems, _ = judge_serving(ok((200, 1), (500, None), (200, 1), (502, None), (200, 2)), 1, 2)
    assert problems == ["the site failed 0.1 s (500 x1) while v1 should serve"]
    problems, _ = judge_serving(ok((200, 1), (200, 2), (500, None), (200, 2), (200, 1)), 1, 2)
    assert problems == [
        "the site failed 0.1 s (500 x1) after the switch",
        "v1 served again after v2 was",
    ]
    slow = [(0.0, 200, 1), (0.1, 502, None), (GAP_MAX_S + 0.2, 200, 2)]
    assert judge_serving(slow, 1, 2)[0] == [
        f"the switch to v2 took the site away {GAP_MAX_S + 0.1:.1f} s (502 x1)"
    ]
    problems, _ = judge_serving(ok((200, 1), (200, 7)), 1, 2)
    assert problems == ["the site failed 0.0 s (200 v7 x1) to the end", "the proxy never served v2"]
