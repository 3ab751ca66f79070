"""The MLflow and Prefect UIs in a real browser (Chromium through Playwright)."""
