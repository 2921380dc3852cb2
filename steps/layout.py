"""Where every stage reads and writes its files; dvc.yaml names the same paths (a test checks)."""

from pathlib import Path

RAW = Path("data/raw")
CORPUS = RAW / "corpus.txt"
CLASSIFICATION = RAW / "classification.jsonl"
LABELS = RAW / "labels.json"
INSTRUCTIONS = RAW / "instructions.json"
SOURCES = RAW / "sources.json"
PREFERENCES = RAW / "preferences.json"
LOCAL_DATA = Path("data/local")

TOKENS = Path("data/tokens")
TOKENIZER = TOKENS / "tokenizer.json"
TRAIN_BIN = TOKENS / "train.bin"
VAL_BIN = TOKENS / "val.bin"
TOKENS_META = TOKENS / "meta.json"

PRETRAIN_MODEL = Path("models/pretrain")
# Beside the DVC out, not inside it: DVC deletes an out before rerunning its stage.
PRETRAIN_CHECKPOINTS = Path("models/pretrain-checkpoints")
CLASSIFIER_MODEL = Path("models/classifier")
INSTRUCT_MODEL = Path("models/instruct")
PREFERENCE_MODEL = Path("models/preference")
PREFERENCE_CHECKPOINTS = Path("models/preference-checkpoints")
MODEL_TOKENIZER = "tokenizer.json"
# In models/pretrain when pretrain.init_from is set: where its starting weights came from.
INIT_PROVENANCE = "init_from.json"
CLASSIFIER_TEST_SPLIT = "test.jsonl"
ADAPTER = "adapter"
RESPONSES = "responses.json"
# Beside models/instruct's responses: those of the same finetuning from random weights.
RANDOM_INIT_RESPONSES = "random_init_responses.json"

REPORTS = Path("reports")
SUMMARY = REPORTS / "summary.md"
JUDGED_RESPONSES = REPORTS / "judged_responses.json"
# Written by the retraining flow (pipelines/retrain.py), not by a DVC stage.
RETRAIN_REPORT = REPORTS / "retrain.json"
RETRAIN_LOCK = Path(".retrain.lock")


def metrics_file(stage: str) -> Path:
    return REPORTS / f"{stage}.json"


def timings_file(stage: str) -> Path:
    """A stage's durations, rates and memory peaks: no DVC output (they differ run to run)."""
    return REPORTS / "timings" / f"{stage}.json"


def plots_dir(stage: str) -> Path:
    return REPORTS / "plots" / stage
