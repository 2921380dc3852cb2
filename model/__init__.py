"""The GPT network, its task heads, LoRA glue, checkpoints and generation (imports only torch & co.)."""
