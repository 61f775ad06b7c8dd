"""The log's line for a batch of new sessions: one machine is named as before, a wave
is one line per batch naming its first few."""

from coordinator.hub.sessions import connected_line


def test_one_machine_is_named_as_it_always_was() -> None:
    assert connected_line(["m1"]) == "machine m1 connected"


def test_a_batch_names_its_first_machines_and_counts_the_rest() -> None:
    assert connected_line(["a", "b"]) == "2 machines connected: a, b"
    ids = [f"m{i}" for i in range(10)]
    assert connected_line(ids, named=3) == "10 machines connected: m0, m1, m2 and 7 more"
    assert connected_line(ids[:8]).endswith("m6, m7")
