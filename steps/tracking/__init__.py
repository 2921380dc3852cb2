"""MLflow, and only here: stage runs, their records read back, the model registry."""
