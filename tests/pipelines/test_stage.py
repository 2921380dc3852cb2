"""Tests for what stage flows share (pipelines/stage.py): the body of a torchrun rank other than 0."""

from __future__ import annotations

import random

import yaml

from pipelines.stage import NoTracking, StageContext, run_stage_rank
from tests.params import merged


def test_a_rank_other_than_0_runs_the_body_seeded_without_mlflow_or_reports(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(merged({"seed": 7})))
    seen: list[tuple[StageContext, float]] = []

    def body(ctx: StageContext) -> dict[str, float]:
        ctx.run.log_metrics({"loss": 1.0}, step=3)  # a no-op, as every other tracking call
        seen.append((ctx, random.random()))
        return {"loss": 1.0}

    run_stage_rank("pretrain", "p.yaml", body)
    ((ctx, drawn),) = seen
    assert isinstance(ctx.run, NoTracking) and ctx.params.seed == 7 and ctx.stage == "pretrain"
    random.seed(7)
    assert drawn == random.random()  # seeded like rank 0, so both build the same model
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.yaml"]  # no mlflow.db, no reports/


def test_the_bodys_mlflow_time_is_reported_as_tracking_not_computation(tmp_path, monkeypatch):
    """compute_seconds is what the stage is for: the time its MLflow calls took inside the body
    (per-step metrics, model artifacts) is orchestration, reported as tracking_seconds."""
    import json
    import time

    import mlflow

    from pipelines.stage import run_stage

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(merged({"seed": 7})))
    from tests.steps.inference import tiny_models

    model = tiny_models.classifier_folder(tmp_path / "models", tiny_models.tokenizer())
    spent: dict[str, float] = {}

    def body(ctx: StageContext) -> dict[str, float]:
        time.sleep(0.2)  # the work
        start = time.perf_counter()
        ctx.run.log_model_folder(model)  # an MLflow pyfunc model: a few tenths of a second
        spent["logging"] = time.perf_counter() - start
        return {"loss": 1.0}

    try:
        metrics = run_stage("pretrain", "p.yaml", ["seed"], [], body)
    finally:
        mlflow.set_tracking_uri(None)
    assert spent["logging"] > 0.05
    assert metrics["tracking_seconds"] >= 0.99 * spent["logging"]
    assert 0.2 <= metrics["compute_seconds"] < 0.35  # the sleep, not the logging
    timings = json.loads((tmp_path / "reports" / "timings" / "pretrain.json").read_text())
    assert timings["tracking_seconds"] == metrics["tracking_seconds"]


def test_the_metrics_file_holds_what_the_inputs_decide_and_timings_go_beside_it(tmp_path, monkeypatch):
    """reports/<stage>.json is a DVC metric: two runs of the same stage write the same bytes. The
    durations, rates and memory peaks go to MLflow and reports/timings/<stage>.json (no DVC out)."""
    import json
    import time

    import mlflow

    from pipelines.stage import is_timing, run_stage

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(merged({"seed": 7})))

    def body(ctx: StageContext) -> dict[str, float]:
        return {"val_loss": 1.5, "steps": 3, "tokens_per_s": time.perf_counter(), "peak_memory_mb": random.random(),
                "seconds_per_step": random.random(), "encode_seconds": random.random(), "mfu": random.random()}

    written = []
    try:
        for _ in range(2):
            metrics = run_stage("pretrain", "p.yaml", ["seed"], [], body)
            written.append((tmp_path / "reports" / "pretrain.json").read_bytes())
    finally:
        mlflow.set_tracking_uri(None)
    assert written[0] == written[1]
    assert json.loads(written[0]) == {"val_loss": 1.5, "steps": 3}
    timings = json.loads((tmp_path / "reports" / "timings" / "pretrain.json").read_text())
    assert set(timings) == {"tokens_per_s", "peak_memory_mb", "seconds_per_step", "encode_seconds", "mfu",
                            "compute_seconds", "tracking_seconds", "startup_seconds"}
    assert timings.items() <= metrics.items()  # the flow (and MLflow) still get every figure
    assert not any(is_timing(name) for name in ("val_loss", "train_accuracy", "steps", "tokens_seen", "parameters",
                                                "encode_workers", "test_f1", "val_perplexity"))


def _classifier_checkout(tmp_path, monkeypatch):
    import shutil
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    shutil.copy(Path(__file__).resolve().parents[2] / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(merged({})))
    trained: list[str] = []

    def body(ctx: StageContext) -> dict[str, float]:
        trained.append(ctx.stage)  # the whole training run, before the fix
        return {}

    return body, trained


def test_a_stage_that_cannot_write_its_outputs_stops_before_it_trains(tmp_path, monkeypatch):
    import pytest

    from pipelines.stage import OutputsNotWritable, run_stage
    from steps.errors import is_expected

    body, trained = _classifier_checkout(tmp_path, monkeypatch)
    (tmp_path / "models").write_text("not a folder")  # models/classifier cannot be created
    with pytest.raises(OutputsNotWritable) as err:
        run_stage("finetune_classifier", "p.yaml", ["seed"], [], body)
    assert trained == []
    assert str(err.value).startswith("models/classifier: the finetune_classifier stage cannot write its output "
                                     "there (models is a file, not a folder: models). Make models a writable folder")
    assert is_expected(err.value)  # said once, without a traceback (pipelines/failures.py)


def test_a_read_only_models_folder_is_named_with_the_fix(tmp_path, monkeypatch):
    import os

    import pytest

    from pipelines.stage import OutputsNotWritable, check_outputs_writable

    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders; the test above covers the check as root")
    _classifier_checkout(tmp_path, monkeypatch)
    (tmp_path / "models").mkdir()
    (tmp_path / "models").chmod(0o555)
    try:
        with pytest.raises(OutputsNotWritable, match=r"Permission denied: models\). .*chmod u\+w models"):
            check_outputs_writable("finetune_classifier")
    finally:
        (tmp_path / "models").chmod(0o755)


def test_the_outputs_checked_are_the_stages_own(tmp_path, monkeypatch):
    from pathlib import Path

    from pipelines.stage import check_outputs_writable, stage_outputs

    _classifier_checkout(tmp_path, monkeypatch)
    outs = stage_outputs("finetune_classifier")
    assert Path("models/classifier") in outs and Path("reports/finetune_classifier.json") in outs
    check_outputs_writable("finetune_classifier")  # a writable checkout passes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dvc.yaml", "p.yaml"]  # and is left as it was
