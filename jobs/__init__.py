"""spark-submit entry points (thin shells over ``pipelines``)."""
