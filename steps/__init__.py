"""The work each pipeline stage does, as small importable jobs (no MLflow, no params.yaml reads)."""
