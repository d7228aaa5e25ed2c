#!/usr/bin/env python3
"""Opens N keep-alive HTTP connections to HOST:PORT, each after one request, holds them, and
prints the resident memory (KiB) of the given processes before and with them, each read after
SETTLE seconds (default 5) without traffic, so that neither counts what an allocator has yet to
give back from earlier work. Used by proxy.sh.

    idle_conns.py HOST PORT VHOST N PID[,PID...] [SETTLE]"""
import asyncio
import sys


def rss_kib(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


async def one(host, port, vhost):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET / HTTP/1.1\r\nHost: {vhost}\r\n\r\n".encode())
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    return reader, writer


async def main():
    host, port, vhost, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    pids = [int(p) for p in sys.argv[5].split(",")]
    settle = float(sys.argv[6]) if len(sys.argv) > 6 else 5
    await asyncio.sleep(settle)
    before = rss_kib(pids)
    conns = []
    for i in range(0, n, 500):
        conns += await asyncio.gather(*[one(host, port, vhost) for _ in range(min(500, n - i))])
    await asyncio.sleep(settle)
    after = rss_kib(pids)
    print(f"{before} {after} {len(conns)}")
    for _, w in conns:
        w.close()


asyncio.run(main())
