"""Columns -> model inputs: column families, encodings (fitted on the training split), scaling, the split.

Import the modules themselves: :mod:`pipelines.features.encoding` is loaded by logged models and must not pull
in Spark, and by every Python worker that builds blocks, so it and what it imports (:mod:`~.arrays`,
:mod:`~.hashing`) need numpy, scipy and pyarrow only: no scikit-learn, pandas or pydantic (issue 22).
"""
