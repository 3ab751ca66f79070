"""The server stack (S3, MLflow, Prefect, PostgreSQL), deployments, security."""
