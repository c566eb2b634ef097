"""Latency from a Flux success event to the Airflow task it marks, against a real Airflow.

For each sample: a run of the test `fluxback_wait` DAG is parked with its sensor deferred, a
commit naming it in trailers is pushed, and the Flux event for that revision is posted to a
real `fluxback serve`; the clock stops when Airflow's API shows the task `success` (the
headline). The worker's poll interval stays at its default (1 s): a worker that waits for its
next poll shows as ~1 s here, one woken by the event as tens of milliseconds. The first
`--warmup` samples are not counted: they clone the mirror, mint the Airflow token and open
the connection, which happens once per process.

Where the time goes comes from Fluxback's own log (debug level, one JSON line per step, on
the same clock): the 202, the claim, the git fetch, the Airflow read and the PATCH, and then
how long the benchmark's poll took to see what the PATCH had already committed.

The poll pauses 5 ms between GETs. That is load of its own on a 2-core machine (Airflow's
API server, one worker, answers a GET every few milliseconds): `--poll-ms 5 20` measures two
pauses in one run, taking turns sample by sample, to show what the poll costs and what it
saves (bench/RESULTS.md). The clock stops only at a GET that saw `success`, so the poll can
make the headline later, never earlier than the task was marked.

    .venv/bin/python bench/event_to_task.py --samples 30 --backend sqlite --poll-ms 5 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from harness import BACKENDS, journal_url

from tests.gitops import GitOpsRepo
from tests.integration.airflow_harness import AirflowServer, ensure_airflow_venv
from tests.integration.fluxback_service import FluxbackService, fluxback_config

WAIT_DAG = "fluxback_wait"
WAIT_TASK = "wait_for_deploy"
READS = ("get_task_instance", "list_task_instances")
STAGES = (
    ("post -> 202 answered (ingest)", "posted", "answered"),
    ("202 -> claimed (wake-up, claim)", "accepted", "claimed"),
    ("claimed -> commit fetched (git)", "claimed", "fetched"),
    ("fetched -> Airflow read sent (resolve, correlate, plan, journal)", "fetched", "read_sent"),
    ("Airflow read (task instance state)", "read_sent", "read_answered"),
    ("read answered -> PATCH sent (journal)", "read_answered", "patch_sent"),
    ("Airflow PATCH", "patch_sent", "patch_answered"),
    ("PATCH answered -> poll sees success (benchmark)", "patch_answered", "seen"),
)


@dataclass(frozen=True)
class Sample:
    delivery: int
    posted: float
    """Epoch seconds when the post started; every other time is relative to it."""
    answered: float
    seen: float


async def sample(
    airflow: AirflowServer, repo: GitOpsRepo, fluxback: FluxbackService, number: int, poll: float
) -> Sample:
    run_id = f"bench__{uuid.uuid4().hex[:12]}"
    airflow.trigger(WAIT_DAG, run_id)
    await airflow.wait_for_ti_state(WAIT_DAG, run_id, WAIT_TASK, ["deferred"], within=120)
    trailers = {"Airflow-Dag-Id": WAIT_DAG, "Airflow-Run-Id": run_id, "Airflow-Task-Id": WAIT_TASK}
    sha = repo.commit({"apps/model.yaml": f"image: model:{number}\n"}, f"deploy {number}", trailers)
    posted, started = time.time(), time.perf_counter()
    delivery = await fluxback.report(sha)
    answered = time.perf_counter() - started
    while True:
        ti = airflow.api("GET", f"/dags/{WAIT_DAG}/dagRuns/{run_id}/taskInstances/{WAIT_TASK}")
        if ti["state"] == "success":
            return Sample(delivery, posted, answered, time.perf_counter() - started)
        await asyncio.sleep(poll)


def timelines(samples: list[Sample], log: Path) -> list[dict[str, float]]:
    """Per sample, the moment (seconds after the post) each stage ended, from Fluxback's log."""
    lines: dict[int, list[dict[str, object]]] = {}
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("delivery_id"), int):
            lines.setdefault(entry["delivery_id"], []).append(entry)
    found = []
    for s in samples:
        moments = {"posted": 0.0, "answered": s.answered, "seen": s.seen}
        for entry in lines.get(s.delivery, []):
            at = datetime.fromisoformat(str(entry["timestamp"])).timestamp() - s.posted
            event, call = entry["event"], entry.get("call")
            if event == "event.accepted":
                moments["accepted"] = at
            elif event in ("delivery.claimed", "git.fetched"):
                moments.setdefault("claimed" if event == "delivery.claimed" else "fetched", at)
            elif event == "airflow.answered" and call in (*READS, "patch_task_instance"):
                name = "read" if call in READS else "patch"
                moments.setdefault(f"{name}_sent", at - float(str(entry["seconds"])))
                moments[f"{name}_answered"] = at
        moments.setdefault("fetched", moments.get("claimed", 0.0))  # the commit was there already
        found.append(moments)
    return found


def ms(values: list[float]) -> str:
    cuts = statistics.quantiles(values, n=10)
    return f"{statistics.median(values) * 1000:.0f} | {cuts[8] * 1000:.0f} | {max(values) * 1000:.0f}"


def report(backend: str, poll_ms: float, samples: list[Sample], log: Path) -> None:
    print("\n| backend | poll ms | samples | p50 ms | p90 ms | max ms |")
    print("|---|---|---|---|---|---|")
    print(f"| {backend} | {poll_ms:g} | {len(samples)} | {ms([s.seen for s in samples])} |")
    moments = timelines(samples, log)
    print("\n| stage | p50 ms | p90 ms | max ms |")
    print("|---|---|---|---|")
    for title, start, end in STAGES:
        spans = [m[end] - m[start] for m in moments if start in m and end in m]
        if len(spans) >= 2:
            print(f"| {title} | {ms(spans)} |")
    own = [m["patch_answered"] - m["accepted"] for m in moments if "patch_answered" in m]
    if len(own) >= 2:
        print(f"| Fluxback's own: 202 -> PATCH answered | {ms(own)} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=30, help="counted samples per poll interval")
    parser.add_argument("--warmup", type=int, default=1, help="samples run first and not counted")
    parser.add_argument("--backend", choices=BACKENDS, default="sqlite")
    parser.add_argument(
        "--poll-ms",
        type=float,
        nargs="+",
        default=[5.0],
        help="pause between the polls of Airflow; several values take turns, sample by sample",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, journal_url(args.backend, Path(folder)) as (url, password):
        root = Path(folder)
        airflow = AirflowServer(root / "airflow", ensure_airflow_venv())
        airflow.start()
        try:
            airflow.wait_for_dags(WAIT_DAG, timeout=120)
            repo = GitOpsRepo(root / "git")
            config = fluxback_config(root / "fluxback", airflow=airflow, repo=repo)
            config |= {"journal": url, "log": {"format": "json", "level": "debug"}}
            config["worker"] = {}  # the defaults, poll interval included
            if password is not None:
                config["journal_password_file"] = str(password)
            fluxback = FluxbackService(root / "fluxback", config)
            fluxback.start()
            try:
                polls = args.poll_ms
                samples: dict[float, list[Sample]] = {poll: [] for poll in polls}
                for n in range(args.warmup + args.samples * len(polls)):
                    poll = polls[n % len(polls)]
                    taken = asyncio.run(sample(airflow, repo, fluxback, n, poll / 1000))
                    if n >= args.warmup:
                        samples[poll].append(taken)
            finally:
                fluxback.stop()
            for poll, counted in samples.items():
                report(args.backend, poll, counted, fluxback.log_path)
        finally:
            airflow.stop()


if __name__ == "__main__":
    main()
