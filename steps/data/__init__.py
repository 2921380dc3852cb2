"""Datasets in: the built-in world, url / hf / local sources, file readers, pinned downloads."""
