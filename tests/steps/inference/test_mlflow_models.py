"""Loading a model by MLflow URI from a local store: a run's logged folder (runs:/) and a
registered version by number or alias (models:/), as the stages and the retraining flow log them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from steps.inference.loading import ModelSpecError, load
from steps.tracking import runs as tracking
from tests.steps.inference import tiny_models


@pytest.fixture
def store(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def logged_classifier(store: Path) -> tuple[str, Path]:
    folder = tiny_models.classifier_folder(store / "models", tiny_models.tokenizer())
    with tracking.stage_run("finetune_classifier", {}, "h", [], experiment="exp") as run:
        run.log_model_folder(folder)
    return run.run_id, folder


def test_runs_and_registry_uris_load_the_logged_model(store: Path) -> None:
    run_id, folder = logged_classifier(store)
    tracking.register_version("gptpipe-classifier", run_id, {})
    tracking.set_alias("gptpipe-classifier", "champion", "1")
    local = load(folder)
    text = torch.tensor([local.tokenizer.encode("free cash", add_special_tokens=False).ids])
    for uri in (f"runs:/{run_id}/model", "models:/gptpipe-classifier/1", "models:/gptpipe-classifier@champion"):
        loaded = load(uri)
        assert (loaded.name, loaded.source, loaded.kind) == (uri, uri, "classifier")
        assert loaded.labels == tiny_models.LABELS
        with torch.no_grad():
            torch.testing.assert_close(loaded.model(text), local.model(text), rtol=0, atol=0)


def test_unknown_names_aliases_and_runs_are_named_in_the_error(store: Path) -> None:
    with pytest.raises(ModelSpecError, match="no MLflow store at .* yet; run the pipeline first"):
        load("models:/gptpipe-classifier@champion")
    run_id, _ = logged_classifier(store)
    tracking.register_version("gptpipe-classifier", run_id, {})
    for uri in ("models:/gptpipe-classifier@champion", "models:/gptpipe-nothing/1", "runs:/0123456789abcdef/model"):
        with pytest.raises(ModelSpecError, match=f"{uri}: cannot be fetched from the MLflow store sqlite:///"):
            load(uri)
    with pytest.raises(ModelSpecError, match=rf"runs:/{run_id}: holds no model folder|runs:/{run_id}/model/tokenizer.json"):
        load(f"runs:/{run_id}/model/tokenizer.json")
