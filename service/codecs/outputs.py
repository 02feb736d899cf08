"""Model output rows -> the prediction objects of the HTTP contract.

The ONNX graph already applies the final activation (softmax, sigmoid, or
y_range); what is left is naming classes, applying multilabel thresholds and
undoing a log-transformed target.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bundle.manifest import Manifest


class PredictionEncoder:
    """Turns a [N, C] output array into N prediction dicts for one version's task."""

    def __init__(self, manifest: Manifest) -> None:
        self.task = manifest.task
        outputs = manifest.outputs
        self.classes = list(outputs.classes or [])
        if self.task in ("classification", "multilabel") and not self.classes:
            raise ValueError(f"{manifest.name} v{manifest.version}: a {self.task} manifest needs outputs.classes")
        self.thresholds = np.asarray(outputs.thresholds or [0.5] * len(self.classes), dtype=np.float32)
        if self.task == "multilabel" and len(self.thresholds) != len(self.classes):
            raise ValueError(
                f"{manifest.name} v{manifest.version}: "
                f"{len(self.thresholds)} thresholds for {len(self.classes)} classes"
            )
        self.log_target = outputs.log_target
        self.target_names = list(outputs.target_names)

    def encode(self, output: np.ndarray) -> list[dict[str, Any]]:
        if self.task == "classification":
            return self._classification(output)
        if self.task == "multilabel":
            return self._multilabel(output)
        return self._regression(output)

    def _classification(self, output: np.ndarray) -> list[dict[str, Any]]:
        indices = output.argmax(axis=1).tolist()
        classes = self.classes
        return [
            {"label": classes[index], "index": index, "probabilities": dict(zip(classes, row))}
            for index, row in zip(indices, output.tolist())
        ]

    def chosen(self, output: np.ndarray) -> np.ndarray:
        """Multilabel: which classes each row predicts (its probability reaches the class threshold)."""
        return output >= self.thresholds

    def values(self, output: np.ndarray) -> np.ndarray:
        """Regression: the served values as float64 [N, targets], ``exp`` undone for a log target."""
        with np.errstate(over="ignore"):
            values = np.exp(output.astype(np.float64)) if self.log_target else output.astype(np.float64)
        return values[:, None] if values.ndim == 1 else values

    def _multilabel(self, output: np.ndarray) -> list[dict[str, Any]]:
        chosen = self.chosen(output)
        classes = self.classes
        return [
            {
                "labels": [c for c, keep in zip(classes, flags) if keep],
                "probabilities": dict(zip(classes, row)),
            }
            for flags, row in zip(chosen.tolist(), output.tolist())
        ]

    def _regression(self, output: np.ndarray) -> list[dict[str, Any]]:
        values = self.values(output)
        # JSON has no NaN or Infinity: a value the model cannot express is sent as null.
        rows = np.where(np.isfinite(values), values, np.nan).tolist()
        rows = [[v if v == v else None for v in row] for row in rows]
        if values.shape[1] == 1:
            return [{"value": row[0]} for row in rows]
        names = self.target_names if len(self.target_names) == values.shape[1] else None
        names = names or [str(i) for i in range(values.shape[1])]
        return [{"values": dict(zip(names, row))} for row in rows]

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {"task": self.task}
        if self.classes:
            described["classes"] = self.classes
        if self.task == "multilabel":
            described["thresholds"] = self.thresholds.tolist()
        if self.task == "regression":
            described["target_names"] = self.target_names
            described["log_target"] = self.log_target
        return described
