"""Ingest ratio: durable signed ingest against a bare aiohttp handler, same load tool, same run.

wrk (Debian: `apt-get install wrk`) posts unique pre-signed ~1 KB Flux events, cycling through
them with a Lua script, to `/flux/events` of a real `fluxback serve`, then posts the same
bodies to a bare aiohttp handler that reads the body and answers 202. Server pinned to CPU 0,
wrk to CPU 1. The ratio of the two request rates is the figure of merit (absolute numbers
depend on the machine). On a shared machine the request rates swing with the neighbours'
load, so the servers' own CPU time per request (user + system, from /proc) is printed too:
its ratio moves much less from run to run.

    .venv/bin/python bench/ingest_ratio.py --backend sqlite --connections 32 1
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import BACKENDS, fluxback, signed_event, wait_ready

from tests.integration.airflow_harness import free_port

LUA = """
local bodies, signatures, next_one = {}, {}, 1
for line in io.lines("%(path)s") do
  local signature, body = line:match("([^\\t]*)\\t(.*)")
  signatures[#signatures + 1] = signature
  bodies[#bodies + 1] = body
end
request = function()
  local i = next_one
  next_one = next_one %% #bodies + 1
  return wrk.format("POST", "/flux/events",
    {["Content-Type"] = "application/json", ["X-Signature"] = signatures[i]}, bodies[i])
end
"""

BARE = """
import sys
from aiohttp import web

async def accept(request):
    await request.read()
    return web.json_response({"id": 1, "duplicate": False}, status=202)

app = web.Application()
app.router.add_post("/flux/events", accept)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def wrk(url: str, script: Path, connections: int, seconds: int, server_pid: int) -> tuple[float, float]:
    """Requests per second of non-error answers, and the server's CPU microseconds per request."""
    cpu_before = cpu_seconds(server_pid)
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu = cpu_seconds(server_pid) - cpu_before
    if "Non-2xx" in out:
        raise RuntimeError(f"errors during the run:\n{out}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return rate, cpu / requests * 1e6


def cpu_seconds(pid: int) -> float:
    """User + system time of a process and all its threads so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=BACKENDS, default="sqlite")
    parser.add_argument("--connections", type=int, nargs="+", default=[32, 1])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--bodies", type=int, default=60_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        bodies = root / "bodies.tsv"
        with bodies.open("w") as out:
            for number in range(args.bodies):
                body, headers = signed_event(number, 500)
                out.write(f"{headers['X-Signature']}\t{body.decode()}\n")
        script = root / "post.lua"
        script.write_text(LUA % {"path": bodies})
        (root / "bare.py").write_text(BARE)
        print(
            "| backend | connections | fluxback req/s | bare aiohttp req/s | ratio"
            " | fluxback CPU µs/req | bare CPU µs/req | CPU ratio (bare/fluxback) |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for connections in args.connections:
            with fluxback(args.backend, cpu=0) as server:
                url = f"{server.url}/flux/events"
                durable, durable_cpu = wrk(url, script, connections, args.seconds, server.pid)
            bare, bare_cpu = _bare(root / "bare.py", script, connections, args.seconds)
            print(
                f"| {args.backend} | {connections} | {durable:.0f} | {bare:.0f} | {durable / bare:.2f}"
                f" | {durable_cpu:.0f} | {bare_cpu:.0f} | {bare_cpu / durable_cpu:.2f} |"
            )


def _bare(program: Path, script: Path, connections: int, seconds: int) -> tuple[float, float]:
    port = free_port()
    server = subprocess.Popen(["taskset", "-c", "0", sys.executable, str(program), str(port)])
    try:
        wait_ready(f"http://127.0.0.1:{port}/flux/events", status=405)  # it only takes POSTs
        return wrk(f"http://127.0.0.1:{port}/flux/events", script, connections, seconds, server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
