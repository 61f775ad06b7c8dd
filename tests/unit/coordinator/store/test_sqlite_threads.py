"""The store shared by the event loop and the threads long writes run in: a
transaction on one thread is never joined nor seen half-done by another (SQLite's two
connections, PostgreSQL's pool: the run's engine, MOORAGE_TEST_DATABASE)."""

from __future__ import annotations

import threading
from pathlib import Path

from proto.tokens import hash_secret
from tests.harness.databases import open_test_store


def test_a_read_on_another_thread_sees_the_last_commit_without_waiting(tmp_path: Path) -> None:
    """A long write in a thread neither stalls a read (the event loop's) nor shows it
    rows that are not committed yet."""
    store = open_test_store(tmp_path)
    inside, release = threading.Event(), threading.Event()
    seen: list[int] = []

    def writer() -> None:
        with store.batch():
            store.create_join_token("t1", hash_secret("s"), now=1, ttl_s=60)
            assert len(store.list_join_tokens()) == 1, "a transaction reads its own writes"
            inside.set()
            release.wait(5)
            store.create_join_token("t2", hash_secret("s"), now=1, ttl_s=60)

    w = threading.Thread(target=writer)
    w.start()
    assert inside.wait(5)
    r = threading.Thread(target=lambda: seen.append(len(store.list_join_tokens())))
    r.start()
    r.join(2)
    assert not r.is_alive(), "the read must not wait for the other thread's transaction"
    assert seen == [0]
    release.set()
    w.join(5)
    assert len(store.list_join_tokens()) == 2


def test_a_write_on_another_thread_is_its_own_transaction(tmp_path: Path) -> None:
    """A write from another thread while a batch is open must not join (and then be
    rolled back with) that batch."""
    store = open_test_store(tmp_path)
    other = threading.Thread(
        target=store.create_join_token,
        args=("t2", hash_secret("s")),
        kwargs={"now": 1, "ttl_s": 60},
    )
    try:
        with store.batch():
            store.create_join_token("t1", hash_secret("s"), now=1, ttl_s=60)
            other.start()
            other.join(0.2)
            raise RuntimeError("roll the batch back")
    except RuntimeError:
        pass
    other.join(5)
    assert [t.id for t in store.list_join_tokens()] == ["t2"]
