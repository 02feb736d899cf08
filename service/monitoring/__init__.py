"""Monitoring of live traffic: out-of-domain flags, drift, the prediction log, feedback, live accuracy.

``monitor.py`` is the façade the pipeline and the routes use. The request path: ``observation.py`` (what
arrives), ``ood.py`` (out-of-domain checks), ``batch.py`` and ``graph.py`` (per-batch columns the graph
computes). Off it: ``worker.py`` (the thread), ``state.py`` (one version's windows), ``drift.py`` (PSI),
``records.py`` and ``log.py`` (the prediction log), ``performance.py`` and ``feedback.py`` (ground truth),
``readings.py`` (guardrail readings, the drift report), ``review.py`` (the review queue), ``metrics.py``.
See docs/monitoring.md.
"""

from service.monitoring.monitor import Monitor

__all__ = ["Monitor"]
