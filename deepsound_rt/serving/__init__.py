"""``deepsound-rt serve``: the Engine behind an HTTP job API with live step events, metrics and a page.

One box: ``create_app(ServeSettings(...))`` under uvicorn (what the CLI runs). Several GPUs or
machines: :func:`~deepsound_rt.serving.ray_serve.deployment` is the same app as a Ray Serve
deployment, one replica per GPU. Needs the ``serve`` extra (FastAPI, uvicorn, prometheus-client;
Ray for scale-out); the SDK itself never imports this package.
"""
from .app import create_app
from .settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]
