"""Offline training: fast.ai-style learners for images and tables, exported as pickle + ONNX + manifest.

from training import ImageDataLoaders, vision_learner
dls = ImageDataLoaders.from_folder("bears/", valid_pct=0.2, size=128)
learn = vision_learner(dls, "resnet18")  # ImageNet weights from the torch cache (or one download)
learn.fine_tune(4)
learn.export("models/", "bears")        # models/bears/<next version>/
"""

from training.builders import tabular_learner, vision_learner
from training.data.augment import aug_transforms
from training.data.core import DataError, DataLoaders
from training.data.images import ImageDataLoaders
from training.data.tabular import TabularDataLoaders
from training.export import ExportError, export_learner, load_learner
from training.interpret import ClassificationInterpretation
from training.learner import Learner, set_seed

__all__ = [
    "ClassificationInterpretation",
    "DataError",
    "DataLoaders",
    "ExportError",
    "ImageDataLoaders",
    "Learner",
    "TabularDataLoaders",
    "aug_transforms",
    "export_learner",
    "load_learner",
    "set_seed",
    "tabular_learner",
    "vision_learner",
]
