"""Write the datasets the pipeline starts from (for now: the built-in offline world)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from model.atomic import write_text
from steps import builtin_data
from steps.config import DownloadConfig


def write_builtin(cfg: DownloadConfig, seed: int, corpus: Path, sms: Path, instructions: Path) -> dict[str, float]:
    """Generate the three built-in datasets from `seed`; returns their sizes."""
    text = builtin_data.generate_corpus(seed, target_bytes=cfg.corpus_bytes)
    write_text(corpus, text)
    messages = builtin_data.generate_sms(seed, n_messages=cfg.sms_messages)
    write_text(sms, "".join(f"{label}\t{body}\n" for label, body in messages))
    records = builtin_data.generate_instructions(
        seed, n_train=cfg.instructions_train, n_test=cfg.instructions_test, n_val=cfg.instructions_val
    )
    write_text(instructions, json.dumps(records, indent=1, ensure_ascii=False) + "\n")
    labels = Counter(label for label, _ in messages)
    return {
        "corpus_bytes": len(text.encode("utf-8")),
        "sms_messages": len(messages),
        "sms_spam_share": labels.get("spam", 0) / max(1, len(messages)),
        "instruction_records": len(records),
    }
