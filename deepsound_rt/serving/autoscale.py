"""Ray Serve autoscaling by job backlog. Jobs run outside HTTP requests (a request only queues one),
so Serve's default signal, ongoing requests, would not see the work; each replica reports the
store's queued + running jobs instead. Kept free of heavy imports: Serve pickles this module into
its controller."""
from __future__ import annotations

BACKLOG = "deepsound_rt_backlog"


def backlog_policy(ctx) -> tuple[float, dict]:
    """One replica per queued or running job (a replica runs one job at a time). Every replica
    reports the same store-wide count, so the largest recent report is the backlog; Serve then
    applies the deployment's min/max replicas and its up/down-scale delays."""
    reports = (ctx.aggregated_metrics or {}).get(BACKLOG) or {}
    if not reports:
        return ctx.target_num_replicas, {}
    return max(reports.values()), {}
