"""MLflow: runs, metrics, datasets, figures and models. The only package that imports mlflow."""
