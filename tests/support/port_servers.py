"""Many tiny HTTP servers at once: one asyncio loop listening on N loopback ports, each
answering its own port number (keep-alive HTTP/1.1), for router tests and benchmarks that
need as many distinct replicas as environments."""

from __future__ import annotations

import asyncio
import threading


class PortServers:
    """``count`` HTTP servers on free loopback ports (``ports``); ``close()`` stops them."""

    def __init__(self, count: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.ports: list[int] = []
        self.servers: list[asyncio.Server] = []
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._listen(count), self.loop).result(timeout=120)

    async def _listen(self, count: int) -> None:
        for _ in range(count):
            server = await asyncio.start_server(_answer, "127.0.0.1", 0)
            self.servers.append(server)
            self.ports.append(server.sockets[0].getsockname()[1])

    def close(self) -> None:
        for server in self.servers:
            self.loop.call_soon_threadsafe(server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    body = str(writer.get_extra_info("sockname")[1]).encode()
    try:
        while await reader.readline():  # a request line; HAProxy may close at any time
            while await reader.readline() not in (b"\r\n", b""):
                pass
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
