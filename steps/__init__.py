"""The work each pipeline stage does, grouped by concern; `pipelines/` wires it into Prefect flows.

- `config.py`, `profiles.py`, `layout.py`: params.yaml read into strict typed config (the one place
  it is read), the shipped profiles, and where every stage reads and writes its files.
- `data/`: datasets in (built-in world, url / hf / local sources, file readers, pinned downloads).
- `tokenization/`: the corpus in pieces, BPE training and encoding, GPT-2's BPE.
- `tasks/`: what each task trains on and how it is scored: language modeling, classification,
  instruction following (batches and loss functions for the one training loop).
- `training/`: the one training loop, checkpoints, devices and precision, torchrun, LoRA glue.
- `evaluation/`: metrics, the LLM judge, baselines, plots, the summary report, run comparison.
- `tracking/`: MLflow, and only there: stage runs and the model registry.
- `scaling/`: the published scaling laws, and a pretraining run planned by them.

Nothing here imports Prefect (a test checks): each job is a plain function a notebook can call.
"""
