"""The Open Inference Protocol (KServe V2 REST) beside the native API: see ``service.oip.endpoints``."""

from service.oip.endpoints import OpenInferenceAPI

__all__ = ["OpenInferenceAPI"]
