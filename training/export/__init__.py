"""Export a trained Learner as a bundle the service loads: ONNX graph, manifest, pickle and monitoring references.

``graph``: the ONNX graph and its parity check against PyTorch; ``references``:
what monitoring needs, fitted at export (reference bins, out-of-domain
thresholds, calibration); ``bundle``: the versioned folder written atomically.
"""

from training.export.bundle import export_learner, load_learner, make_readable, next_version
from training.export.graph import OPSET, PARITY_ATOL, PARITY_RTOL, ExportError, exports_logits, output_names
from training.export.references import default_ood_score

__all__ = [
    "OPSET",
    "PARITY_ATOL",
    "PARITY_RTOL",
    "ExportError",
    "default_ood_score",
    "export_learner",
    "exports_logits",
    "load_learner",
    "make_readable",
    "next_version",
    "output_names",
]
