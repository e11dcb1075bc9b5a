"""Prometheus exposition for a service's own registry (one registry per app, so tests can build many apps).

The page also carries the process-wide collectors of prometheus_client's default registry:
``process_*`` (CPU seconds, resident memory, open files), ``python_gc_*`` (collections by generation)
and ``python_info``.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from starlette.responses import Response

__all__ = ["metrics_response"]


def metrics_response(registry: CollectorRegistry) -> Response:
    return Response(generate_latest(registry) + generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
