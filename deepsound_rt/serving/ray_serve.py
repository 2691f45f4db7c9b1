"""The same app as a Ray Serve deployment: each replica is ``create_app`` with one runner on its own
device (one GPU each where there are GPUs).

Replicas share the job store (the data directory must be the same path for all of them), so any
replica answers for any job, and a replica that dies mid-job stops renewing its lease: the next
free replica takes the job again (see :mod:`deepsound_rt.serving.store`).
"""
from __future__ import annotations

from dataclasses import replace

from ray import serve
from ray.serve.config import AutoscalingConfig, AutoscalingPolicy

from .app import create_app
from .autoscale import BACKLOG, backlog_policy
from .settings import ServeSettings


@serve.deployment(name="deepsound-rt", max_ongoing_requests=1000, graceful_shutdown_timeout_s=30)
@serve.ingress()  # the app is built per replica, from its settings (``__serve_build_asgi_app__``)
class DeepSoundDeployment:
    """One replica. Requests are light (the work runs in the replica's runner thread), hence the
    high ``max_ongoing_requests``: event streams stay open for a job's whole run."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings

    def __serve_build_asgi_app__(self):
        return create_app(self.settings)

    def record_autoscaling_stats(self) -> dict[str, float]:
        counts = self.app.state.service.store.counts()  # ``app``: the ASGI app Serve runs here
        return {BACKLOG: float(counts.get("queued", 0) + counts.get("running", 0))}


def deployment(settings: ServeSettings, *, replicas: int = 1, min_replicas: int | None = None,
               max_replicas: int | None = None, replica_cpus: float = 1.0, gpu: bool | None = None):
    """The bound application for ``serve.run``: ``replicas`` fixed replicas, or autoscaling between
    ``min_replicas`` and ``max_replicas`` by job backlog. ``gpu`` (default: the engine's device is
    not the CPU and this machine has CUDA) gives each replica one GPU and runs it there."""
    if gpu is None:
        import torch

        gpu = settings.engine.device != "cpu" and torch.cuda.is_available()
    per_replica = replace(settings, devices=("cuda" if gpu else "cpu",), exclusive=False)
    options: dict = {"ray_actor_options": {"num_cpus": replica_cpus, "num_gpus": 1 if gpu else 0}}
    if min_replicas is None and max_replicas is None:
        options["num_replicas"] = replicas
    else:
        low = 1 if min_replicas is None else min_replicas
        high = max(low, replicas if max_replicas is None else max_replicas)
        options["autoscaling_config"] = AutoscalingConfig(
            min_replicas=low, max_replicas=high, initial_replicas=min(max(replicas, low), high),
            upscale_delay_s=10, downscale_delay_s=120, policy=AutoscalingPolicy(policy_function=backlog_policy))
    return DeepSoundDeployment.options(**options).bind(per_replica)
