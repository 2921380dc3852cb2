"""`gptpipe serve`: an OpenAI-compatible HTTP API over the pipeline's models, with batched generation."""
