"""The download stage as users run it (`python -m pipelines download`): url sources from a loopback
server, Prefect retries on transient errors only, nothing half-written when a source fails, and a
dataset too small for its stage refused before any training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.download import check_classification_sizes
from pipelines.stage import NoTracking, StageContext
from steps.data.readers import DataError
from tests.params import shipped_params

ROOT = Path(__file__).resolve().parents[2]


def _stage_dir(tmp_path: Path, server_url: str, corpus_name: str = "the-verdict.txt", retries: int = 2):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    book = yaml.safe_load((ROOT / "profiles" / "book.yaml").read_text())["download"]
    names = {"corpus": corpus_name, "classification": "sms+spam+collection.zip",
             "instructions": "instruction-data.json", "preferences": "instruction-data-with-preference.json"}
    for dataset, name in names.items():
        book[dataset]["source"].update(url=f"{server_url}/{name}", retries=retries, retry_delay_s=0.2)
        params["download"][dataset] = book[dataset]
    work = tmp_path / "stage"
    work.mkdir()
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_"))}
    env.update(PYTHONPATH=str(ROOT), GPTPIPE_CACHE=str(tmp_path / "cache"), NO_PROXY="127.0.0.1",
               PREFECT_HOME=str(tmp_path / "prefect-home"))
    return work, env


def _download(work: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipelines", "download"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_book_sources_download_with_a_retry_after_a_503(shared_data: Path, serve_folder, tmp_path: Path) -> None:
    server = serve_folder(shared_data / "book")
    server.fail = [503]  # the first request fails the way an overloaded server does
    work, env = _stage_dir(tmp_path, server.url)
    proc = _download(work, env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert server.requests[:2] == ["/the-verdict.txt", "/the-verdict.txt"]  # retried by Prefect
    assert len(server.requests) == 5  # then each file once

    raw = work / "data" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == ["classification.jsonl", "corpus.txt", "instructions.json",
                                                    "labels.json", "preferences.json", "sources.json"]
    metrics = json.loads((work / "reports" / "download.json").read_text())
    assert metrics["corpus_documents"] == 1
    assert metrics["classification_records"] == 5574
    assert metrics["instruction_records"] == 1100
    assert (metrics["preference_records"], metrics["preference_identical_pairs"]) == (1100, 6)
    sources = json.loads((raw / "sources.json").read_text())
    assert sources["corpus"]["sha256"] == "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f"
    assert sources["classification"]["member"] == "SMSSpamCollection"

    # A second run (say, after a change elsewhere in `download`) reads the cache: no request at all.
    before = len(server.requests)
    assert _download(work, env).returncode == 0
    assert len(server.requests) == before


@pytest.mark.slow
def test_a_missing_file_fails_at_once_and_leaves_no_partial_data(shared_data: Path, serve_folder,
                                                                 tmp_path: Path) -> None:
    server = serve_folder(shared_data / "book")
    work, env = _stage_dir(tmp_path, server.url, corpus_name="no-such-file.txt", retries=3)
    (work / "data" / "raw").mkdir(parents=True)
    (work / "data" / "raw" / "corpus.txt").write_text("the previous run's data\n")
    proc = _download(work, env)
    assert proc.returncode != 0
    assert "404" in proc.stderr and "no-such-file.txt" in proc.stderr
    assert server.requests == ["/no-such-file.txt"]  # a 404 is not retried
    assert (work / "data" / "raw" / "corpus.txt").read_text() == "the previous run's data\n"
    assert not (work / "data" / "raw.partial").exists()


def test_a_five_row_classification_set_is_refused_by_download(tmp_path: Path) -> None:
    # The case: 5 rows passed download, pretrained, then crashed finetuning on an empty
    # validation split. The check reads the set as download wrote it, with finetune_classifier's split.
    (tmp_path / "labels.json").write_text('["ham", "spam"]')
    rows = ["ham", "ham", "spam", "ham", "spam"]
    (tmp_path / "classification.jsonl").write_text("".join(json.dumps({"label": r, "text": "t"}) + "\n" for r in rows))
    ctx = StageContext("download", shipped_params({"finetune_classifier": {"balance": False}}), NoTracking())
    with pytest.raises(DataError, match=r"five.csv: too few records for finetune_classifier: 5 records .* give "
                                        r"train 3, validation 0, test 2, so the validation split gets too few"):
        check_classification_sizes(ctx, tmp_path, "five.csv")
    ctx = StageContext("download", shipped_params({"finetune_classifier": {"val_fraction": 0.2}}), NoTracking())
    check_classification_sizes(ctx, tmp_path, "five.csv")  # train 3, validation 1, test 1
