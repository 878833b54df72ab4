"""Columns -> model inputs: the train/validation split and standardization statistics."""

from pipelines.features.scaling import FeatureScaling, fit_scaling
from pipelines.features.split import VALIDATION_COLUMN, with_validation_flag

__all__ = ["VALIDATION_COLUMN", "FeatureScaling", "fit_scaling", "with_validation_flag"]
