"""A coordinator restored from an older backup while its agents hold newer state.

The documented procedure (docs/operations.md, "Restore"): an online backup of the
SQLite database, later the coordinator stopped, the copy put in place, the coordinator
started; "agents hold their own desired state and report what they run; they converge
to the restored state". Each round: a backup; then a release rolled out everywhere
(the agents' desired state moves past the backup's); the victim machine's agent goes
down and the coordinator is killed; the backup is put in place and the coordinator
started; a new release is rolled out through the restored coordinator while the
victim is still away; then the victim's agent comes back. The world must converge on
the restored coordinator's word: the new release everywhere, the victim included,
with true stickers. Writes acknowledged after the backup are gone by definition
(counted, not judged). As many rounds as reboots (a round takes ~20 s).
"""

from __future__ import annotations

import itertools
import random
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tests.chaos.world import World

if TYPE_CHECKING:
    from tests.chaos.runner import Config, Fault, Scenario


ROUNDS = itertools.count(1)


class SqliteWorld(World):
    """A world whose coordinator is on SQLite whatever MOORAGE_TEST_DATABASE says (the
    backup is SQLite's online backup)."""

    def _make_coordinator(self, host: str):  # type: ignore[no-untyped-def]
        coord = super()._make_coordinator(host)
        coord.database_url = ""
        return coord

    @property
    def database(self) -> Path:
        return self.coord.state_dir / "moorage.db"


def online_backup(source: Path, target: Path) -> None:
    """`sqlite3 moorage.db ".backup target"`: a consistent copy while it is written."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    dst.close()
    src.close()


def restore(world: World, rng: random.Random) -> Fault:
    from tests.chaos.runner import Fault, FaultNotTaken

    assert isinstance(world, SqliteWorld)
    backup = world.tmp / "backup.db"
    online_backup(world.database, backup)
    word = f"n{next(ROUNDS)}"
    world.deploy(word)
    if world.wait_converged(120) is None:
        raise FaultNotTaken(f"release {word} did not roll out before the restore")
    victim = world.agents[world.victim]
    assert victim.proc is not None
    victim.proc.kill9()
    world.coord.kill9()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{world.database}{suffix}").unlink(missing_ok=True)
    backup.rename(world.database)
    world.coord.start()
    world.deploy(f"{word}b")
    time.sleep(rng.uniform(1.0, 3.0))  # the restored coordinator moves on without it
    victim.start()
    return Fault(note=f"restored to before {word}; {word}b deployed with {world.victim} away")


def scenarios(config: Config) -> list[Scenario]:
    from tests.chaos.runner import Scenario

    shape = config.loopback()
    return [
        Scenario(
            "restore",
            restore,
            shape,
            world=SqliteWorld,
            rollout=False,
            redeploys=True,
            writes_survive=False,
            rounds=lambda c: c.reboots,
        )
    ]
