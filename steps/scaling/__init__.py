"""Scaling laws: plan a pretraining run by the published laws (Kaplan 2020, Chinchilla 2022 and
its 2024 refit), in this project's terms: parameters, tokens, a model shape and `max_steps`."""
