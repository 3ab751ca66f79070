"""Promotion policy: who becomes champion (pure policy, no MLflow)."""
