"""Row weights: ``data.weight`` (sample weights) times ``model.class_weight``, normalized on the training split.

A row's raw weight is ``sample_weight_i * class_weight[y_i]`` (each 1 when not configured), with scikit-learn's
meanings: ``balanced`` gives class ``c`` the weight ``n / (n_classes * n_c)`` counted on the training rows, a
mapping gives each listed label value its weight (unlisted values 1). The objective is the weighted mean
``sum_i w_i loss_i / sum_i w_i`` (+ penalty): rows are given ``s_i = w_i / mean_train(w)``, so the kernels'
means over rows (and mini-batches) are unbiased estimates of it and the training rows' ``s`` average 1.
The mean is computed in one partition-ordered pass (:func:`~pipelines.features.scaling.fit_scaling`), so the
weights are bit-for-bit reproducible.
"""

from __future__ import annotations

from collections.abc import Mapping

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipelines.errors import DataError
from pipelines.features.scaling import fit_scaling
from pipelines.identifiers import column

WEIGHT_COLUMN = "__row_weight"


def row_weights(train: DataFrame, label: str, sample_weight: str | None,
                class_weight: str | Mapping[str, float] | None, label_classes: tuple[str, str] | None,
                where: str) -> Column | None:
    """The normalized row weight ``s_i`` as a column expression (None when rows are unweighted).

    ``train``: the training rows (label as 0/1 double for classification; ``label_classes``: a string label's
    two values, for the keys of a ``class_weight`` mapping).

    Raises
    ------
    DataError
        A ``class_weight`` key that is not a value of the label; training rows whose weights are all zero.
    """
    if sample_weight is None and class_weight is None:
        return None
    raw = column(sample_weight).cast("double") if sample_weight is not None else F.lit(1.0)
    if class_weight is not None:
        per_class = _class_weights(train, label, class_weight, label_classes, where)
        factor = F.lit(1.0)
        for value, weight in sorted(per_class.items()):
            factor = F.when(column(label) == F.lit(value), F.lit(weight)).otherwise(factor)
        raw = raw * factor
    mean = float(fit_scaling(train.select(raw.alias(WEIGHT_COLUMN)), [WEIGHT_COLUMN], where=where).means[0])
    if not mean > 0.0:
        named = f"data.weight column {sample_weight!r}" if sample_weight else "model.class_weight"
        raise DataError(f"{where}: the training rows' weights ({named}) are all zero: nothing to fit")
    return raw / F.lit(mean)


def _class_weights(train: DataFrame, label: str, class_weight: str | Mapping[str, float],
                   label_classes: tuple[str, str] | None, where: str) -> dict[float, float]:
    """``{label value (0.0 / 1.0): weight}``."""
    if class_weight == "balanced":
        counts = {float(r[0]): int(r["count"]) for r in train.groupBy(column(label)).count().collect()}
        total = sum(counts.values())
        return {value: total / (len(counts) * count) for value, count in counts.items()}
    assert isinstance(class_weight, Mapping)
    names = {label_classes[0]: 0.0, label_classes[1]: 1.0} if label_classes else {"0": 0.0, "1": 1.0}
    unknown = [key for key in class_weight if key not in names]
    if unknown:
        raise DataError(f"{where}: model.class_weight names {unknown}, which are not values of the label "
                        f"{label!r} (its values: {sorted(names)})")
    return {names[key]: float(weight) for key, weight in class_weight.items()}
