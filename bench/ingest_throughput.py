"""Ingest throughput: signed Flux events posted to a real `fluxback serve` on loopback.

Each event is unique (so each one is a durable journal commit), signed like Flux signs it,
and answered 202 only after the commit. Reports requests per second, latency percentiles and
the server's resident memory afterwards. Bounded: N requests, then it stops.

    .venv/bin/python bench/ingest_throughput.py --requests 5000 --concurrency 32 --backend sqlite
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aiohttp
from harness import BACKENDS, fluxback, rss_mib, signed_event


async def post_all(url: str, requests: int, concurrency: int) -> list[float]:
    latencies: list[float] = []
    queue = list(range(requests))

    async def client(session: aiohttp.ClientSession) -> None:
        while queue:
            body, headers = signed_event(queue.pop(), 50)
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as answer:
                await answer.read()
                if answer.status != 202:
                    raise RuntimeError(f"unexpected {answer.status}")
            latencies.append(time.perf_counter() - started)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--backend", choices=BACKENDS, default="sqlite")
    args = parser.parse_args()
    with fluxback(args.backend) as server:
        started = time.perf_counter()
        latencies = asyncio.run(post_all(f"{server.url}/flux/events", args.requests, args.concurrency))
        elapsed = time.perf_counter() - started
        memory = rss_mib(server.pid)
    cuts = statistics.quantiles(latencies, n=100)
    print(
        f"| {args.backend} | {args.requests} | {args.concurrency} | {args.requests / elapsed:.0f} | "
        f"{cuts[49] * 1000:.1f} | {cuts[98] * 1000:.1f} | {memory:.0f} |"
    )


if __name__ == "__main__":
    main()
