"""A loopback TCP proxy in front of a unix-socket PostgreSQL that counts round trips.

A round trip is counted each time the client sends after the server last spoke (or at the
start): a burst of client messages answered by the server. Run one client at a time through
it and divide by the number of operations.
"""

from __future__ import annotations

import asyncio
import contextlib


class RoundTripProxy:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.round_trips = 0
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> RoundTripProxy:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_unix_connection(self.socket_path)
        state = {"last": "server"}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, side: str) -> None:
            try:
                while data := await src.read(65536):
                    if side == "client" and state["last"] == "server":
                        self.round_trips += 1
                    state["last"] = side
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        await asyncio.gather(pump(client_r, server_w, "client"), pump(server_r, client_w, "server"))
