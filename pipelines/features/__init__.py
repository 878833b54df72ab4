"""Columns -> model inputs: column families, encodings (fitted on the training split), scaling, the split.

Import the modules themselves: :mod:`pipelines.features.encoding` is loaded by logged models and must not pull
in Spark.
"""
