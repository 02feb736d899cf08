"""Monitoring of live traffic: drift, out-of-domain flags, the prediction log, feedback, live accuracy.

``monitor.py`` ties the parts together; ``drift.py`` (windows and PSI),
``ood.py`` (out-of-domain checks), ``performance.py`` (feedback judgements),
``log.py`` (the prediction log writer) and ``routes.py`` (the drift and
feedback endpoints) each hold one concept. See docs/monitoring.md.
"""

from service.monitoring.monitor import Monitor

__all__ = ["Monitor"]
