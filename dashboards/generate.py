"""Fluxback's Grafana dashboards, built from code with grafana-foundation-sdk (Grafana 11 models).

`python -m dashboards.generate` writes `dashboards/*.json`. The JSON is committed so that an
operator can import it without Python; a test fails when it differs from what this module
builds, so change this file and regenerate, never the JSON by hand.

Every panel queries the data source picked in the `datasource` variable. Queries that span the
dashboard's time range use `$__range`, rates use `$__rate_interval`: the names-and-syntax test
replaces both by a fixed window before handing the expressions to promtool.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    DataTransformerConfig,
    DynamicConfigValue,
    Threshold,
    ThresholdsMode,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

HERE = Path(__file__).resolve().parent
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"
OBJECT = "kind, namespace, name"
OBJECT_FILTER = 'kind=~"$kind", namespace=~"$namespace", name=~"$name"'
OBJECT_LEGEND = "{{kind}}/{{namespace}}/{{name}}"
TAGS = ["fluxback", "flux", "airflow"]

Panel = dashboard.Panel | timeseries.Panel | stat.Panel | table.Panel


def query(expr: str, legend: str = "__auto", ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)


def percentiles(histogram: str, qs: tuple[float, ...] = (0.5, 0.95, 0.99)) -> list[prometheus.Dataquery]:
    """One query per quantile of a histogram's recent observations, legend `p50`, `p95`, ..."""
    return [
        query(
            f"histogram_quantile({q}, sum by (le) (rate({histogram}_bucket[{RATE}])))", f"p{q * 100:g}", ref
        )
        for q, ref in zip(qs, "ABCDEFGH", strict=False)
    ]


def object_deploys(window: str, outcome: str | None = None) -> str:
    """Correlated revisions per Flux object in `window` (all outcomes when `outcome` is None)."""
    matchers = OBJECT_FILTER + (f', outcome="{outcome}"' if outcome else "")
    return f"sum by ({OBJECT}) (increase(fluxback_deploys_total{{{matchers}}}[{window}]))"


def change_failure_rate(window: str) -> str:
    """Failed / all correlated revisions per object; no value for an object without any."""
    return f"{object_deploys(window, 'failure')} / ({object_deploys(window)} > 0)"


def object_lead_time(q: float, window: str) -> str:
    """Quantile `q` of commit-to-live times per object over `window`."""
    buckets = f"fluxback_commit_to_live_seconds_bucket{{{OBJECT_FILTER}}}"
    return f"histogram_quantile({q}, sum by ({OBJECT}, le) (increase({buckets}[{window}])))"


def graph(title: str, description: str, unit: str, targets: list[prometheus.Dataquery]) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).description(description).unit(unit).datasource(DATASOURCE)
    for target in targets:
        panel.with_target(target)
    return panel.span(12).height(8)


ALERT_FROM_ONE = ((None, "green"), (1.0, "red"))
EXACTLY_ONE = ((None, "red"), (1.0, "green"), (2.0, "red"))


def single(
    title: str,
    description: str,
    expr: str,
    *,
    colors: tuple[tuple[float | None, str], ...] = (),
    legend: str = "__auto",
) -> stat.Panel:
    """One number per series, coloured by `colors`: (from value, colour) steps, the first from -inf."""
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(query(expr, legend).instant())
        .span(6)
        .height(5)
    )
    if colors:
        steps = [Threshold(value=value, color=color) for value, color in colors]
        panel.thresholds(dashboard.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps))
    return panel


def datasource_variable() -> dashboard.DatasourceVariable:
    return dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")


def object_variable(label: str, narrowed_by: str) -> dashboard.QueryVariable:
    """A multi-value filter on one label of the Flux object, narrowed by the filters before it."""
    selector = f"fluxback_deploys_total{{{narrowed_by}}}" if narrowed_by else "fluxback_deploys_total"
    return (
        dashboard.QueryVariable(label)
        .label(label.capitalize())
        .datasource(DATASOURCE)
        .query(f"label_values({selector}, {label})")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )


def overview() -> dashboard.Dashboard:
    """The service: events in, actions out, Airflow, the worker and its journal, replicas."""
    rows: list[tuple[str, list[Panel]]] = [
        (
            "Events in",
            [
                graph(
                    "Events in by result and source",
                    "Flux events per second by what became of them. webhook: POST /flux/events;"
                    " kubernetes: status changes of Flux objects read from the cluster (kubernetes.enabled).",
                    "reqps",
                    [
                        query(
                            f"sum by (result) (rate(fluxback_events_received_total[{RATE}]))",
                            "webhook: {{result}}",
                        ),
                        query(
                            f"sum by (result) (rate(fluxback_status_changes_total[{RATE}]))",
                            "kubernetes: {{result}}",
                            "B",
                        ),
                    ],
                ),
                graph(
                    "Connections",
                    "Client connections open now per replica, and connections closed at the door:"
                    " evicted to stay under webhook.max_connections, or refused as malformed HTTP.",
                    "short",
                    [
                        query("sum by (instance) (fluxback_open_connections)", "open: {{instance}}"),
                        query(
                            f"sum(rate(fluxback_connections_evicted_total[{RATE}]))",
                            "evicted per second",
                            "B",
                        ),
                        query(
                            f"sum(rate(fluxback_http_malformed_requests_total[{RATE}]))",
                            "malformed per second",
                            "C",
                        ),
                    ],
                ),
                graph(
                    "HTTP requests by route and status class",
                    "Includes the probes: 5xx on /readyz means the pod is reported not ready.",
                    "reqps",
                    [
                        query(
                            "sum by (route, status_class)"
                            f" (rate(fluxback_http_request_duration_seconds_count[{RATE}]))",
                            "{{route}} {{status_class}}",
                        )
                    ],
                ),
            ],
        ),
        (
            "Actions on Airflow",
            [
                graph(
                    "Actions by kind and outcome",
                    "Task marks, DAG runs and asset events per second; temporary_error is retried.",
                    "ops",
                    [
                        query(
                            f"sum by (kind, outcome) (rate(fluxback_actions_total[{RATE}]))",
                            "{{kind}} {{outcome}}",
                        )
                    ],
                ),
                graph(
                    "Airflow requests by method and status",
                    "REST calls per second; status 'error' means no HTTP answer (connection, timeout).",
                    "reqps",
                    [
                        query(
                            f"sum by (method, status) (rate(fluxback_airflow_request_seconds_count[{RATE}]))",
                            "{{method}} {{status}}",
                        )
                    ],
                ),
                graph(
                    "Airflow request latency",
                    "Percentiles of one REST call to Airflow, every instance and method together.",
                    "s",
                    percentiles("fluxback_airflow_request_seconds"),
                ),
                graph(
                    "Event to action",
                    "From receipt of a Flux event to the Airflow action it caused.",
                    "s",
                    percentiles("fluxback_event_to_action_seconds", qs=(0.5, 0.95)),
                ),
            ],
        ),
        (
            "Worker and journal",
            [
                graph(
                    "Worker lag",
                    "From receipt of an event to the worker first taking it.",
                    "s",
                    percentiles("fluxback_worker_lag_seconds"),
                ),
                graph(
                    "Journal depth by state",
                    "Deliveries not done yet, from the journal (shared by every replica, hence max).",
                    "short",
                    [query('max by (state) (fluxback_journal_depth{state!="done"})', "{{state}}")],
                ),
                single(
                    "Dead letters in the journal",
                    "Deliveries given up after their retry budget; replay them once the cause is fixed.",
                    'max(fluxback_journal_depth{state="dead"})',
                    colors=ALERT_FROM_ONE,
                ),
                single(
                    "New dead letters",
                    "Deliveries that became dead letters in the selected time range.",
                    "sum(increase(fluxback_dead_letters_total[$__range]))",
                    colors=ALERT_FROM_ONE,
                ),
                graph(
                    "Git fetches by repository and result",
                    "Fetches into the local mirrors; errors are retried with the delivery.",
                    "ops",
                    [
                        query(
                            f"sum by (repository, result) (rate(fluxback_git_fetches_total[{RATE}]))",
                            "{{repository}} {{result}}",
                        )
                    ],
                ),
            ],
        ),
        (
            "Kubernetes",
            [
                graph(
                    "Status changes by kind and result",
                    "Flux object status changes read from the cluster and journaled; duplicate: a"
                    " webhook or an earlier status already reported the same revision and outcome.",
                    "ops",
                    [
                        query(
                            f"sum by (kind, result) (rate(fluxback_status_changes_total[{RATE}]))",
                            "{{kind}} {{result}}",
                        )
                    ],
                ),
                graph(
                    "Watch restarts by kind",
                    "Lists and watches started again after an error or an expired resource version.",
                    "short",
                    [query(f"sum by (kind) (increase(fluxback_watch_restarts_total[{RATE}]))", "{{kind}}")],
                ),
                graph(
                    "Kubernetes Events on Flux objects",
                    "Events Fluxback posted on the Flux objects (kubectl describe), by reason and outcome.",
                    "ops",
                    [
                        query(
                            f"sum by (reason, outcome) (rate(fluxback_kube_events_total[{RATE}]))",
                            "{{reason}} {{outcome}}",
                        )
                    ],
                ),
            ],
        ),
        (
            "Replicas",
            [
                single(
                    "Replicas",
                    "Fluxback processes Prometheus scrapes.",
                    "count(fluxback_build_info)",
                ),
                single(
                    "Ready replicas",
                    "Replicas that can accept and journal an event now (what /readyz says).",
                    "sum(fluxback_ready)",
                ),
                single(
                    "Failing health checks",
                    "Per check of /healthz/details (worker-side credentials included): replicas where it"
                    " fails now. `curl /healthz/details` on a pod says why.",
                    "sum by (check) (1 - fluxback_health_check)",
                    colors=ALERT_FROM_ONE,
                    legend="{{check}}",
                ),
                single(
                    "Leaders",
                    "Replicas running the singleton work (retention, full re-lists of Flux objects):"
                    " exactly one is right.",
                    "sum(fluxback_leader)",
                    colors=EXACTLY_ONE,
                ),
                graph(
                    "Leader by replica",
                    "1 while the replica holds the leadership lock.",
                    "short",
                    [query("max by (instance) (fluxback_leader)", "{{instance}}")],
                ),
                single(
                    "Versions",
                    "Replicas per running version.",
                    "count by (version) (fluxback_build_info)",
                    legend="{{version}}",
                ),
            ],
        ),
    ]
    return _assemble(
        dashboard.Dashboard("Fluxback")
        .uid("fluxback-overview")
        .time("now-6h", "now")
        .description("Flux events in, Airflow actions out: the service, its worker and its journal.")
        .with_variable(datasource_variable()),
        rows,
    )


def deploys() -> dashboard.Dashboard:
    """DORA per Flux object: deploy frequency, change-failure rate and lead time for changes."""
    summary = (
        table.Panel()
        .title("Per Flux object in the selected time range")
        .description(
            "Deploys: correlated revisions that went live. Failures: correlated revisions that failed."
            " Change failure rate: failures / (deploys + failures). Lead time: commit date to the"
            " Flux event that made the commit live."
        )
        .datasource(DATASOURCE)
        .span(24)
        .height(9)
    )
    columns = {
        "A": ("Deploys", object_deploys("$__range", "success"), "short"),
        "B": ("Failures", object_deploys("$__range", "failure"), "short"),
        "C": ("Change failure rate", change_failure_rate("$__range"), "percentunit"),
        "D": ("Lead time p50", object_lead_time(0.5, "$__range"), "s"),
        "E": ("Lead time p90", object_lead_time(0.9, "$__range"), "s"),
    }
    for ref, (title, expr, unit) in columns.items():
        summary.with_target(query(expr, ref=ref).instant().format(PromQueryFormat.TABLE))
        summary.override_by_name(title, [DynamicConfigValue(id_val="unit", value=unit)])
    summary.with_transformation(DataTransformerConfig(id_val="merge", options={}))
    summary.with_transformation(
        DataTransformerConfig(
            id_val="organize",
            options={
                "excludeByName": {"Time": True},
                "renameByName": {f"Value #{ref}": title for ref, (title, _, _) in columns.items()},
            },
        )
    )
    window = "7d"
    trends: list[Panel] = [
        graph(
            "Deploys per day",
            "Correlated revisions that went live in the 24 hours before each point.",
            "short",
            [query(object_deploys("1d", "success"), OBJECT_LEGEND)],
        ),
        graph(
            f"Change failure rate ({window})",
            f"Failed / all correlated revisions in the {window} before each point.",
            "percentunit",
            [query(change_failure_rate(window), OBJECT_LEGEND)],
        ),
        graph(
            f"Lead time for changes, median ({window})",
            f"Median time from commit to live over the {window} before each point.",
            "s",
            [query(object_lead_time(0.5, window), OBJECT_LEGEND)],
        ),
    ]
    return _assemble(
        dashboard.Dashboard("Fluxback: deploys per Flux object")
        .uid("fluxback-deploys")
        .description(
            "DORA deploy frequency, change-failure rate and lead time for changes per Flux object,"
            " from the revisions Fluxback correlated with commits."
        )
        .time("now-7d", "now")
        .with_variable(datasource_variable())
        .with_variable(object_variable("kind", ""))
        .with_variable(object_variable("namespace", 'kind=~"$kind"'))
        .with_variable(object_variable("name", 'kind=~"$kind", namespace=~"$namespace"')),
        [("Summary", [summary]), ("Trends", trends)],
    )


def _assemble(board: dashboard.Dashboard, rows: list[tuple[str, list[Panel]]]) -> dashboard.Dashboard:
    """Rows in order, each followed by its panels; every panel gets its own id (links and alerts use it)."""
    board.tags(TAGS).tooltip(DashboardCursorSync.CROSSHAIR).refresh("1m").readonly()
    ids = itertools.count(1)
    for title, panels in rows:
        board.with_row(dashboard.Row(title).id(next(ids)))
        for panel in panels:
            board.with_panel(panel.id(next(ids)))
    return board


DASHBOARDS: Mapping[str, Callable[[], dashboard.Dashboard]] = {
    "fluxback-overview.json": overview,
    "fluxback-deploys.json": deploys,
}
"""File name in dashboards/ -> the builder of its dashboard."""


def rendered() -> dict[str, str]:
    """Every dashboard's JSON as it is committed: sorted keys, two-space indent, final newline."""
    return {
        name: json.dumps(build().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
        for name, build in DASHBOARDS.items()
    }


def main() -> None:
    for name, text in rendered().items():
        (HERE / name).write_text(text)
        print(f"wrote dashboards/{name}")


if __name__ == "__main__":
    main()
