"""Training: the one loop (loss as a parameter), checkpoints, devices and precision, torchrun, LoRA."""
