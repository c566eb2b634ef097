"""Latency from a Flux success event to the Airflow task it marks, against a real Airflow.

For each sample: a run of the test `fluxback_wait` DAG is parked with its sensor deferred, a
commit naming it in trailers is pushed, and the Flux event for that revision is posted to a
real `fluxback serve`; the clock stops when Airflow's API shows the task `success`. The
worker's poll interval stays at its default (1 s): a worker that waits for its next poll
shows as ~1 s here, one woken by the event as tens of milliseconds.

    .venv/bin/python bench/event_to_task.py --samples 15 --backend sqlite
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from harness import BACKENDS, journal_url

from tests.gitops import GitOpsRepo
from tests.integration.airflow_harness import AirflowServer, ensure_airflow_venv
from tests.integration.fluxback_service import FluxbackService, fluxback_config

WAIT_DAG = "fluxback_wait"
WAIT_TASK = "wait_for_deploy"


async def sample(airflow: AirflowServer, repo: GitOpsRepo, fluxback: FluxbackService, number: int) -> float:
    run_id = f"bench__{uuid.uuid4().hex[:12]}"
    airflow.trigger(WAIT_DAG, run_id)
    await airflow.wait_for_ti_state(WAIT_DAG, run_id, WAIT_TASK, ["deferred"], within=120)
    trailers = {"Airflow-Dag-Id": WAIT_DAG, "Airflow-Run-Id": run_id, "Airflow-Task-Id": WAIT_TASK}
    sha = repo.commit({"apps/model.yaml": f"image: model:{number}\n"}, f"deploy {number}", trailers)
    started = time.perf_counter()
    await fluxback.report(sha)
    while True:
        ti = airflow.api("GET", f"/dags/{WAIT_DAG}/dagRuns/{run_id}/taskInstances/{WAIT_TASK}")
        if ti["state"] == "success":
            return time.perf_counter() - started
        await asyncio.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=15)
    parser.add_argument("--backend", choices=BACKENDS, default="sqlite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, journal_url(args.backend, Path(folder)) as (url, password):
        root = Path(folder)
        airflow = AirflowServer(root / "airflow", ensure_airflow_venv())
        airflow.start()
        try:
            airflow.wait_for_dags(WAIT_DAG, timeout=120)
            repo = GitOpsRepo(root / "git")
            config = fluxback_config(root / "fluxback", airflow=airflow, repo=repo)
            config |= {"journal": url, "log": {"format": "json", "level": "warning"}}
            config["worker"] = {}  # the defaults, poll interval included
            if password is not None:
                config["journal_password_file"] = str(password)
            fluxback = FluxbackService(root / "fluxback", config)
            fluxback.start()
            try:
                latencies = [asyncio.run(sample(airflow, repo, fluxback, n)) for n in range(args.samples)]
            finally:
                fluxback.stop()
        finally:
            airflow.stop()
    cuts = statistics.quantiles(latencies, n=10)
    print("| backend | samples | p50 ms | p90 ms | max ms |")
    print("|---|---|---|---|---|")
    print(
        f"| {args.backend} | {args.samples} | {statistics.median(latencies) * 1000:.0f} |"
        f" {cuts[8] * 1000:.0f} | {max(latencies) * 1000:.0f} |"
    )


if __name__ == "__main__":
    main()
