"""Retraining machinery: one retrain per checkout, DVC runs, the promotion gate."""
