"""(being written)"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.chaos.runner import Config, Scenario


def scenarios(config: Config) -> list[Scenario]:
    return []
