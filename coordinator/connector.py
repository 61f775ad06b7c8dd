"""The coordinator's outgoing connections (relays to other coordinators, webhooks),
opened by the event loop itself.

aiohttp's `TCPConnector` connects a socket of its own (`loop.sock_connect`, through
aiohappyeyeballs) and then hands it to `loop.create_connection(sock=...)`. Under uvloop,
the coordinator's loop (`proto.process.run_main`), a peer that accepts such connections
and resets them (a coordinator cut off loudly, a proxy refusing, a receiver going down)
leaves the loop holding file descriptors it no longer owns: once their numbers are
reused, connections the coordinator accepts fail ("[Errno 17] File exists" from epoll:
API and hub clients see their connection closed without an answer), a request answers
500 ("File descriptor N is used by transport"), or libuv aborts the process (uvloop
0.23, aiohttp 3.14; the known uvloop issue #653, aiohttp #10506). Found by the fault
suite's `coord-partition`: a loud cut between two coordinators, whose relays then
failed over and over.

`LoopConnector` lets the loop open the connection itself (`create_connection` with
the host and port: libuv connects, and closes what it opened), one address after
another as aiohttp tries them; everything else is aiohttp's.
"""

from __future__ import annotations

import asyncio
import inspect
import ssl
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.helpers import ceil_timeout

if "addr_infos" not in inspect.signature(aiohttp.TCPConnector._wrap_create_connection).parameters:
    # The method below replaces a private one of aiohttp's (from 3.10 it is called with
    # the resolved addresses); refuse to start on an aiohttp that calls it otherwise
    # (tests/unit/coordinator/hub/test_relay_reset.py checks the one packaged).
    raise ImportError(
        f"aiohttp {aiohttp.__version__}: TCPConnector._wrap_create_connection takes no"
        " addr_infos, which coordinator.connector needs (aiohttp 3.10 and later)"
    )


class LoopConnector(aiohttp.TCPConnector):
    """A `TCPConnector` whose connections the event loop opens from the address."""

    async def _wrap_create_connection(
        self,
        *args: Any,
        addr_infos: list[Any],
        req: aiohttp.ClientRequest,
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 (aiohttp calls it so)
        client_error: type[Exception] = aiohttp.ClientConnectorError,
        **kwargs: Any,
    ) -> tuple[asyncio.Transport, ResponseHandler]:
        factory: Callable[[], ResponseHandler] = args[0]  # as aiohttp passes it
        family, _, _, _, address = addr_infos[0]  # aiohttp drops it and retries on failure
        host, port = str(address[0]), int(address[1])
        try:
            async with ceil_timeout(timeout.sock_connect, ceil_threshold=timeout.ceil_threshold):
                return await self._loop.create_connection(
                    factory, host, port, family=family, **kwargs
                )
        except ssl.CertificateError as exc:  # as aiohttp maps them
            raise aiohttp.ClientConnectorCertificateError(req.connection_key, exc) from exc
        except ssl.SSLError as exc:
            raise aiohttp.ClientConnectorSSLError(req.connection_key, exc) from exc
        except OSError as exc:
            if exc.errno is None and isinstance(exc, asyncio.TimeoutError):
                raise
            raise client_error(req.connection_key, exc) from exc
