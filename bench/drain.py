"""Drain: how long a backlog of unique events takes from the first post until nothing is unfinished.

N unique signed events for 500 Flux objects are posted by 32 concurrent clients to a real
`fluxback serve` (no git, no Airflow: each delivery only records that rules apply), then
`/metrics` is polled until no delivery is received, failed, resolving or acting. A worker
whose cost grows with the backlog shows as an 8k/2k time ratio above 4. Also reports the
server's resident memory idle (before) and the highest seen under load.

    .venv/bin/python bench/drain.py --backend sqlite --events 2000 8000
    .venv/bin/python bench/drain.py --backend postgresql --events 2000 8000
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp
from harness import BACKENDS, fluxback, rss_mib, signed_event

UNFINISHED = ("received", "failed", "resolving", "acting")


async def unfinished(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(f"{url}/metrics") as answer:
        text = await answer.text()
    total = 0
    for line in text.splitlines():
        if line.startswith("fluxback_journal_depth{") and any(f'state="{s}"' in line for s in UNFINISHED):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


async def drain(
    url: str, pid: int, events: int, objects: int, concurrency: int
) -> tuple[float, float, float]:
    """Seconds until posted, seconds until drained, and peak RSS in MiB."""
    queue = list(range(events))
    peak = rss_mib(pid)

    async def client(session: aiohttp.ClientSession) -> None:
        while queue:
            body, headers = signed_event(queue.pop(), objects)
            async with session.post(f"{url}/flux/events", data=body, headers=headers) as answer:
                if answer.status != 202:
                    raise RuntimeError(f"unexpected {answer.status}: {await answer.text()}")

    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        posted = time.perf_counter() - started
        while await unfinished(session, url):
            peak = max(peak, rss_mib(pid))
            await asyncio.sleep(0.05)
        return posted, time.perf_counter() - started, peak


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=BACKENDS, default="sqlite")
    parser.add_argument("--events", type=int, nargs="+", default=[2000, 8000])
    parser.add_argument("--objects", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    print("| backend | events | posted s | drained s | events/s end to end | RSS idle MiB | RSS peak MiB |")
    print("|---|---|---|---|---|---|---|")
    for events in args.events:
        with fluxback(args.backend, "worker: {concurrency: 16}\n") as server:
            idle = rss_mib(server.pid)
            posted, drained, peak = asyncio.run(
                drain(server.url, server.pid, events, args.objects, args.concurrency)
            )
        print(
            f"| {args.backend} | {events} | {posted:.1f} | {drained:.1f} | {events / drained:.0f} |"
            f" {idle:.0f} | {peak:.0f} |"
        )


if __name__ == "__main__":
    main()
