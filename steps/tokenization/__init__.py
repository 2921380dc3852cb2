"""Text to tokens: the corpus in pieces, BPE training and parallel encoding, GPT-2's BPE."""
