"""Evaluation: metrics, LLM judge, baselines, plots, the summary report, comparing runs."""
