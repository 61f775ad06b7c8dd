"""Process plumbing shared by the daemons and CLIs: logging and the event loop."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def setup_logging(verbose: bool = False) -> None:
    """Plain lines to stderr; under systemd, journald adds time and unit."""
    name = os.environ.get("MOORAGE_LOG_LEVEL", "INFO").upper()
    level = logging.DEBUG if verbose else getattr(logging, name, logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def run_main(main: Coroutine[Any, Any, T]) -> T:
    """uvloop where installed: several times faster with thousands of sockets."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
