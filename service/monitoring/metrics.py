"""Monitoring's Prometheus metrics (drift, out-of-domain, estimated and live accuracy, feedback, the log)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from service.monitoring.log import LogMetrics


class MonitorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.drift_score = Gauge(
            "serving_drift_score",
            "PSI of a feature over the drift window, all regions.",
            ["model", "version", "feature"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.ood = Counter(
            "serving_ood", "Items flagged out-of-domain, by reason.", ["model", "version", "reason"], registry=r
        )
        self.items = Counter(
            "serving_monitored_items", "Items scored by the monitor.", ["model", "version", "region"], registry=r
        )
        self.estimated_accuracy = Gauge(
            "serving_estimated_accuracy",
            "Accuracy estimated from calibrated confidences over the drift window (classification).",
            ["model", "version", "region"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.feedback = Counter(
            "serving_feedback", "Ground-truth answers received.", ["model", "version", "region"], registry=r
        )
        self.feedback_correct = Counter(
            "serving_feedback_correct",
            "Answers that matched the prediction (classification).",
            ["model", "version", "region"],
            registry=r,
        )
        self.feedback_abs_error = Counter(
            "serving_feedback_abs_error",
            "Sum of |answer - prediction| (regression).",
            ["model", "version", "region"],
            registry=r,
        )
        self.live_accuracy = Gauge(
            "serving_live_accuracy",
            "Accuracy over the feedback window (classification).",
            ["model", "version", "region"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.live_error = Gauge(
            "serving_live_error",
            "Mean absolute error over the feedback window (regression).",
            ["model", "version", "region"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.dropped = Counter(
            "serving_monitor_dropped", "Observations dropped because the monitor queue was full.", registry=r
        )
        self.failed = Counter(
            "serving_monitor_failed",
            "Observations the monitor could not fold into its windows (each alone; the others of its batch are).",
            registry=r,
        )
        self.log = LogMetrics(r)
