"""Tasks: the batches and loss of each (next-token prediction, classification, instructions)."""
