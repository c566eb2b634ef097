"""Ingest throughput: signed Flux events posted to a real `fluxback serve` on loopback.

Each event is unique (so each one is a journal commit with synchronous=FULL), signed like
Flux signs it, and answered 202 only after the commit. Reports requests per second, latency
percentiles and the server's resident memory afterwards. Bounded: N requests, then it stops.

    .venv/bin/python bench/ingest_throughput.py --requests 5000 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.flux_replay import event_body, flux_headers
from tests.integration.airflow_harness import free_port

KEY = b"bench-hmac-key"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def post_all(url: str, requests: int, concurrency: int) -> list[float]:
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for number in range(requests):
        queue.put_nowait(number)

    async def client(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            number = queue.get_nowait()
            body = event_body(
                name=f"app-{number % 50}",
                revision=f"main@sha1:{number:040x}",
                message=f"Reconciliation finished in {number}ms, next run in 10m0s",
            )
            started = time.perf_counter()
            async with session.post(url, data=body, headers=flux_headers(body, hmac_key=KEY)) as answer:
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "key").write_bytes(KEY)
        port = free_port()
        (root / "config.yaml").write_text(
            f"listen: 127.0.0.1:{port}\njournal: sqlite:///{root}/journal.db\n"
            f"webhook: {{hmac_keys: [{root}/key]}}\nlog: {{format: json, level: warning}}\n"
        )
        server = subprocess.Popen(
            [sys.executable, "-m", "receiver", "serve", "--config", str(root / "config.yaml")],
            stdout=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    asyncio.run(_ready(url))
                    break
                except OSError:
                    time.sleep(0.1)
            started = time.perf_counter()
            latencies = asyncio.run(post_all(f"{url}/flux/events", args.requests, args.concurrency))
            elapsed = time.perf_counter() - started
            memory = rss_mib(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)
    cuts = statistics.quantiles(latencies, n=100)
    print(
        f"| {args.requests} | {args.concurrency} | {args.requests / elapsed:.0f} | "
        f"{cuts[49] * 1000:.1f} | {cuts[98] * 1000:.1f} | {memory:.0f} |"
    )


async def _ready(url: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/readyz") as answer:
        if answer.status != 200:
            raise OSError("not ready")


if __name__ == "__main__":
    main()
