from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry, Counter

from chat_common.metrics import metrics_response


def test_the_page_has_the_service_metrics_and_the_process_and_gc_ones() -> None:
    registry = CollectorRegistry()
    Counter("svc_things", "Things.", registry=registry).inc(3)
    gc.collect(2)
    text = bytes(metrics_response(registry).body).decode()
    assert "svc_things_total 3.0" in text
    assert "process_resident_memory_bytes" in text  # ProcessCollector (Linux /proc)
    full = next(line for line in text.splitlines() if line.startswith('python_gc_collections_total{generation="2"}'))
    assert float(full.split()[-1]) >= 1  # the collection above is counted
    assert text.count("# TYPE svc_things_total") == 1
