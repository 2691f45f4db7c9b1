"""Running the app: under uvicorn on one box, or as a Ray Serve deployment (what ``deepsound-rt serve``
and ``serve --ray`` call)."""
from __future__ import annotations

import ipaddress
import logging
import signal
import threading

from ..errors import DeepSoundError
from .settings import MIB, ServeSettings

RAY_OBJECT_STORE_BYTES = 128 * MIB  # jobs pass through files, not Ray objects: keep the store small


def check_bind(host: str, token: str | None) -> None:
    """Without a token, only this machine may talk to the server."""
    if token:
        return
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise DeepSoundError(f"--host {host}: without a token the server listens on 127.0.0.1 only "
                             "(give --token or set DEEPSOUND_RT_TOKEN)")


def run_uvicorn(settings: ServeSettings, host: str, port: int) -> None:
    import uvicorn

    from .app import create_app

    check_bind(host, settings.token)
    uvicorn.run(create_app(settings), host=host, port=port, access_log=False, log_level="info")


def run_ray(settings: ServeSettings, host: str, port: int, *, address: str | None, replicas: int,
            min_replicas: int | None, max_replicas: int | None, replica_cpus: float) -> None:
    """Start (or join) Ray, deploy, and serve until SIGINT/SIGTERM; then take the deployment down.
    A local Ray instance gets just the CPUs the replicas ask for, a small object store and no
    dashboard."""
    try:
        import ray
        from ray import serve
    except ImportError as error:
        raise DeepSoundError(f"--ray needs Ray Serve: pip install 'deepsound_rt[ray]' ({error})") from error

    from .ray_serve import deployment

    check_bind(host, settings.token)
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        most = max(replicas, min_replicas or 0, max_replicas or 0)
        ray.init(address="local", num_cpus=max(1, int(most * replica_cpus + 0.999)),
                 object_store_memory=RAY_OBJECT_STORE_BYTES, include_dashboard=False, logging_level=logging.WARNING)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(deployment(settings, replicas=replicas, min_replicas=min_replicas, max_replicas=max_replicas,
                             replica_cpus=replica_cpus), name="deepsound-rt", route_prefix="/")
        scale = (f"{replicas} replicas" if min_replicas is None and max_replicas is None
                 else f"{min_replicas or 1}-{max_replicas or replicas} replicas, autoscaling")
        print(f"deepsound-rt: serving on http://{host}:{port} (Ray Serve, {scale})", flush=True)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
