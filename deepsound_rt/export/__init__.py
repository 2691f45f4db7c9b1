"""ONNX export of every network, with a manifest that later loads check against.

``export_preset`` writes an export directory; ``deepsound_rt.verify.export_parity.verify_export``
proves it against torch; ``deepsound_rt.backends.GraphLoader`` runs it (at the export's precision).
"""
from .exporter import export_preset
from .manifest import ExportError, ExportManifest

__all__ = ["export_preset", "ExportError", "ExportManifest"]
