"""A TCP proxy that delays every chunk a client sends by a fixed time: per-request latency for
whatever speaks HTTP through it (each request arrives as one burst), in the client-to-server
direction only, with requests on one connection still pipelined. Used by benches/s3-restore.sh to
give Cairn and restic the same 20 ms to their S3 server.

    latency_proxy.py LISTEN_PORT TARGET_PORT DELAY_MS
"""

import asyncio
import sys
import time


async def pump_delayed(reader, writer, delay):
    queue = asyncio.Queue()

    async def read():
        while True:
            data = await reader.read(1 << 16)
            await queue.put((time.monotonic() + delay, data))
            if not data:
                return

    async def write():
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                writer.write_eof() if writer.can_write_eof() else writer.close()
                return
            writer.write(data)
            await writer.drain()

    await asyncio.gather(read(), write())


async def pump(reader, writer):
    while True:
        data = await reader.read(1 << 20)
        if not data:
            writer.close()
            return
        writer.write(data)
        await writer.drain()


async def main():
    listen, target, delay = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) / 1000

    async def handle(client_r, client_w):
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", target)
            await asyncio.gather(pump_delayed(client_r, server_w, delay), pump(server_r, client_w))
        except (ConnectionError, OSError):
            pass
        finally:
            client_w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
