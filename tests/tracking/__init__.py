"""MLflow: runs, tags, the model registry and the promotion gate."""
