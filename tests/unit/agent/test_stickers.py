"""Version stickers (agent.stickers): when one is due, and how it is kept on disk."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import msgspec
import pytest

from agent.backends.base import UnitRuntime
from agent.reconciler import Observed, file_content, sha256_text
from agent.stickers import (
    StickerStore,
    by_deployment,
    file_name,
    is_current,
    sticker_for,
)
from agent.store import AppliedUnit
from proto.messages import (
    LABEL_DEPLOYMENT,
    LABEL_RELEASE,
    LABEL_VERSION,
    DesiredState,
    DesiredUnit,
    Sticker,
    StickerUnit,
)
from proto.units import UnitOption, unit_file_sha256, unit_hash

DIGEST = "sha256:" + "a" * 64


def labels(release: str = "r1", version: str = "1.0") -> dict[str, str]:
    return {LABEL_DEPLOYMENT: "shop", LABEL_RELEASE: release, LABEL_VERSION: version}


def service(
    name: str = "web.service", state: DesiredState = "launched", release: str = "r1"
) -> DesiredUnit:
    opts = [UnitOption("Service", "ExecStart", f"/bin/sleep {len(name)}")]
    return DesiredUnit(
        name, opts, desired_state=state, hash=unit_hash(opts), labels=labels(release)
    )


def container(name: str = "db.container", digest: str = DIGEST) -> DesiredUnit:
    opts = [UnitOption("Container", "Image", "busybox@" + DIGEST)]
    return DesiredUnit(name, opts, hash=unit_hash(opts), labels=labels(), image_digest=digest)


def applied(*units: DesiredUnit) -> dict[str, AppliedUnit]:
    return {
        u.name: AppliedUnit(
            u.hash, u.desired_state, "" if u.name.endswith(".container") else file_sha(u)
        )
        for u in units
    }


def file_sha(u: DesiredUnit) -> str:
    return sha256_text(file_content(u))


def up(u: DesiredUnit, active: str = "active", digest: str = DIGEST) -> Observed:
    if u.name.endswith(".container"):
        sub = "running" if active == "active" else "exited"
        rt = UnitRuntime(u.name, "loaded", active, sub, image_digest=digest)
        return Observed(None, rt, container_hash=u.hash)
    return Observed(file_sha(u), UnitRuntime(u.name, "loaded", active, "running"))


def test_sticker_names_release_units_and_digests() -> None:
    s, c = service(), container()
    sticker = sticker_for("shop", [s, c], applied(s, c), {s.name: up(s), c.name: up(c)}, 42.0)
    assert sticker is not None
    assert (sticker.deployment, sticker.release, sticker.version) == ("shop", "r1", "1.0")
    assert sticker.units[s.name].hash == s.hash
    assert sticker.units[s.name].sha256 == unit_file_sha256(s.options) == file_sha(s)
    assert sticker.units[c.name].sha256 == unit_file_sha256(c.options)
    assert sticker.image_digests == {c.name: DIGEST}
    assert sticker.applied_at == 42.0
    assert is_current(sticker, [s, c])


def test_no_sticker_until_every_unit_is_applied_and_up() -> None:
    s, c, idle = service(), container(), service("idle.service", state="loaded")
    units = [s, c, idle]
    good = {s.name: up(s), c.name: up(c), idle.name: up(idle, "inactive")}
    assert sticker_for("shop", units, applied(*units), good, 0) is not None
    not_yet = {
        "not applied": (applied(c, idle), good),
        "old hash applied": (applied(*units) | {s.name: AppliedUnit("old", "launched", "")}, good),
        "not active": (applied(*units), good | {s.name: up(s, "activating")}),
        "failed": (applied(*units), good | {s.name: up(s, "failed")}),
        "file differs": (applied(*units), good | {s.name: Observed("f" * 64, up(s).runtime)}),
        "not observed": (applied(*units), {c.name: up(c), idle.name: up(idle, "inactive")}),
        "container stopped": (applied(*units), good | {c.name: up(c, "inactive")}),
        "other image": (applied(*units), good | {c.name: up(c, digest="sha256:" + "b" * 64)}),
        "old container": (
            applied(*units),
            good | {c.name: Observed(None, up(c).runtime, container_hash="old")},
        ),
    }
    for what, (done, observed) in not_yet.items():
        assert sticker_for("shop", units, done, observed, 0) is None, what


def test_units_of_two_releases_mean_the_release_is_still_arriving() -> None:
    a, b = service("a.service"), service("b.service", release="r2")
    assert sticker_for("shop", [a, b], applied(a, b), {a.name: up(a), b.name: up(b)}, 0) is None


def test_unpinned_container_records_the_digest_it_runs() -> None:
    c = container(digest="")
    sticker = sticker_for("shop", [c], applied(c), {c.name: up(c, digest="sha256:" + "c" * 64)}, 0)
    assert sticker is not None and sticker.image_digests == {c.name: "sha256:" + "c" * 64}


def test_is_current_only_for_the_same_release_and_units() -> None:
    s = service()
    sticker = sticker_for("shop", [s], applied(s), {s.name: up(s)}, 0)
    assert sticker is not None
    assert is_current(sticker, [s])
    assert not is_current(sticker, [service(release="r2")])
    assert not is_current(sticker, [s, service("more.service")])
    assert not is_current(sticker, [])


def test_by_deployment_groups_wanted_labelled_units() -> None:
    plain = DesiredUnit("plain.service", [], hash="x")
    gone = service("gone.service", state="inactive")
    s = service()
    groups = by_deployment({u.name: u for u in (plain, gone, s)})
    assert groups == {"shop": [s]}


@pytest.mark.parametrize(
    ("deployment", "expected"),
    [("shop", "shop.json"), ("web-1.prod", "web-1.prod.json"), ("a_b", "a_b.json")],
)
def test_file_name_of_plain_names(deployment: str, expected: str) -> None:
    assert file_name(deployment) == expected


def test_file_name_never_leaves_the_directory() -> None:
    names = {file_name(d) for d in ("../etc/passwd", "a/b", ".hidden", "x.tmp", "a b", "")}
    assert len(names) == 6
    for name in names:
        assert "/" not in name and not name.startswith(".") and name.endswith(".json")


def test_store_writes_atomically_loads_and_deletes(tmp_path: Path) -> None:
    store = StickerStore(tmp_path / "stickers")
    assert store.load() == {}  # no directory yet
    s = service()
    sticker = sticker_for("shop", [s], applied(s), {s.name: up(s)}, 1.0)
    odd = Sticker("a/b", "r9", "9", {})
    assert sticker is not None
    store.write(sticker)
    store.write(odd)
    files = sorted(p.name for p in (tmp_path / "stickers").iterdir())
    assert files == sorted(["shop.json", file_name("a/b")])  # no temp file left behind
    assert StickerStore(tmp_path / "stickers").load() == {"shop": sticker, "a/b": odd}
    assert oct(os.stat(tmp_path / "stickers" / "shop.json").st_mode & 0o777) == "0o644"
    store.delete("shop")
    store.delete("never-there")
    assert store.load() == {"a/b": odd}


def test_store_ignores_temp_foreign_and_corrupt_files(tmp_path: Path) -> None:
    store = StickerStore(tmp_path)
    good = Sticker("shop", "r1", "1", {})
    store.write(good)
    (tmp_path / ".shop.json.1234.tmp").write_text("{")
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "other.json").write_bytes(msgspec.json.encode(Sticker("shop", "r0", "0", {})))
    assert store.load() == {"shop": good}


def test_store_replaces_by_rename_and_a_reader_never_sees_half(tmp_path: Path) -> None:
    """Each write is a new file renamed over the old (new inode), so a reader polling
    all along decodes every version whole: never a truncated or half-written file."""
    store = StickerStore(tmp_path)
    units = {f"u{i:04}.service": StickerUnit("h" * 40, "s" * 64) for i in range(400)}
    path = tmp_path / "shop.json"
    store.write(Sticker("shop", "r0", "0", units))
    inodes = {path.stat().st_ino}
    done = threading.Event()
    seen: set[str] = set()
    failures: list[str] = []

    def reader() -> None:
        while not done.is_set():
            try:
                seen.add(msgspec.json.decode(path.read_bytes(), type=Sticker).release)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                failures.append(str(exc))
            time.sleep(0)  # let the writer have the GIL too

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for n in range(1, 20):
            store.write(Sticker("shop", f"r{n}", str(n), units))
            inodes.add(path.stat().st_ino)
    finally:
        done.set()
        thread.join()
    assert failures == []
    assert len(seen) > 1 and len(inodes) > 1
    assert [p.name for p in tmp_path.iterdir()] == ["shop.json"]
