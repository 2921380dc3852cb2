"""The stages' models as MLflow pyfunc models (steps/tracking/pyfunc_models.py): logged through the
stage code path, registered and made champion as the retraining flow does, then used through MLflow
alone: `mlflow.pyfunc.load_model(...).predict(...)`, a process without this repository on its path,
and `mlflow models serve`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pandas as pd
import pytest
import yaml

from model.checkpoint import TRAINING_STATE
from pipelines.retraining.promotion import CHAMPION
from pipelines.stage import StageContext, run_stage
from steps.inference.classify import classify
from steps.inference.loading import load_folder
from steps.inference.streaming import Completion, Sampling, encode
from steps.tasks.instruction import format_prompt
from steps.tracking import pyfunc_models
from steps.tracking import runs as tracking
from tests.conftest import free_port
from tests.params import merged
from tests.steps.inference import tiny_models

ROOT = Path(__file__).resolve().parents[3]
CLASSIFIER, INSTRUCT = "gptpipe-classifier", "gptpipe-instruct"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A local store where finetune_classifier, finetune_instruct and pretrain logged tiny models
    through run_stage, the first two registered with the champion alias as retraining sets it."""
    root = tmp_path_factory.mktemp("pyfunc")
    tok = tiny_models.tokenizer()
    folders = {"finetune_classifier": tiny_models.classifier_folder(root / "models", tok),
               "finetune_instruct": tiny_models.instruct_folder(root / "models", tok),
               "pretrain": tiny_models.lm_folder(root / "models", tok)}
    (folders["pretrain"] / TRAINING_STATE).write_bytes(b"resume state: no part of the model")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        (root / "params.yaml").write_text(yaml.safe_dump(merged({"seed": 7})))
        run_ids = {}
        for stage, folder in folders.items():
            def body(ctx: StageContext, folder=folder) -> dict[str, float]:
                ctx.run.log_model_folder(folder)
                return {}

            metrics = run_stage(stage, "params.yaml", ["seed"], [], body)
            assert metrics["tracking_seconds"] > 0  # logging the model counts as tracking, not compute
            (run,) = tracking.fetch_runs(merged({})["tracking"]["experiment"], stage=stage, root=root)
            run_ids[stage] = run.run_id
        for name, stage in ((CLASSIFIER, "finetune_classifier"), (INSTRUCT, "finetune_instruct")):
            version = tracking.register_version(name, run_ids[stage], {"retrain_id": "r-1"}, root=root)
            tracking.set_alias(name, CHAMPION, version.version, root=root)
        mlflow.set_tracking_uri(None)
    return SimpleNamespace(root=root, uri=uri, folders=folders, run_ids=run_ids)


@pytest.fixture
def tracking_env(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    yield
    mlflow.set_tracking_uri(None)


def test_registered_versions_point_at_the_logged_pyfunc_model(store, tracking_env) -> None:
    champion = tracking.version_by_alias(CLASSIFIER, CHAMPION, root=store.root)
    assert champion.run_id == store.run_ids["finetune_classifier"]
    assert champion.source.startswith("models:/m-")
    info = mlflow.models.get_model_info(f"models:/{CLASSIFIER}@{CHAMPION}")
    assert "python_function" in info.flavors
    assert info.signature.inputs.input_names() == ["text"]
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{store.run_ids['pretrain']}/model",
                                                     dst_path=str(store.root / "dl")))
    files = {p.name for p in (local / "artifacts" / pyfunc_models.MODEL_FOLDER).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert TRAINING_STATE not in files  # resume state stays with the DVC output
    assert (local / "code" / "model" / "gpt.py").is_file() and (local / "code" / "steps" / "inference").is_dir()
    assert any(r.startswith("torch==") for r in (local / "requirements.txt").read_text().split())


def test_the_champion_classifier_predicts_what_gptpipe_classify_does(store, tracking_env) -> None:
    model = mlflow.pyfunc.load_model(f"models:/{CLASSIFIER}@{CHAMPION}")
    got = model.predict(pd.DataFrame({"text": tiny_models.TEXTS}))
    want = classify(load_folder(store.folders["finetune_classifier"], "c", "cpu"), tiny_models.TEXTS)
    assert list(got["label"]) == [label for label, _ in want]
    for probs, (_, expected) in zip(got["probabilities"], want):
        assert probs == pytest.approx(expected, abs=1e-6)
    assert model.predict([{"text": tiny_models.TEXTS[0]}]).iloc[0]["label"] == want[0][0]


def test_a_dict_of_lists_is_refused_with_the_shapes_that_work(store, tracking_env) -> None:
    model = mlflow.pyfunc.load_model(f"models:/{CLASSIFIER}@{CHAMPION}")
    with pytest.raises(mlflow.exceptions.MlflowException, match="expected one string per row; pass a DataFrame"):
        model.predict({"text": tiny_models.TEXTS[:2]})


def test_the_instruction_model_answers_in_its_prompt_style_with_the_params_given(store, tracking_env) -> None:
    model = mlflow.pyfunc.load_model(f"models:/{INSTRUCT}@{CHAMPION}")
    assert [p.name for p in model.metadata.signature.params] == [
        "max_new_tokens", "temperature", "top_k", "top_p", "seed"]
    loaded = load_folder(store.folders["finetune_instruct"], "i", "cpu")

    def expected(instruction: str, extra: str, sampling: Sampling) -> str:
        prompt = format_prompt({"instruction": instruction, "input": extra}, "alpaca")
        return Completion(loaded, encode(loaded, prompt), sampling).text()

    frame = pd.DataFrame({"prompt": ["Say hello.", "Translate."], "input": ["", "ok see you later"]})
    got = model.predict(frame, params={"max_new_tokens": 6})
    assert list(got["text"]) == [expected("Say hello.", "", Sampling(6)), expected("Translate.", "ok see you later",
                                                                                    Sampling(6))]
    sampled = {"max_new_tokens": 6, "temperature": 1.5, "top_k": 50, "top_p": 0.95, "seed": 3}
    got = model.predict(pd.DataFrame({"prompt": ["Say hello."]}), params=sampled)
    assert got["text"][0] == expected("Say hello.", "", Sampling(6, 1.5, 50, 0.95, 3))
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"top_p must be in \(0, 1\], got 0.0"):
        model.predict(pd.DataFrame({"prompt": ["Say hello."]}), params={"top_p": 0.0})


def test_the_pretrained_lm_continues_the_prompt_as_is(store, tracking_env) -> None:
    model = mlflow.pyfunc.load_model(f"runs:/{store.run_ids['pretrain']}/model")
    assert model.metadata.signature.inputs.input_names() == ["prompt"]
    loaded = load_folder(store.folders["pretrain"], "p", "cpu")
    want = Completion(loaded, encode(loaded, "Are we still"), Sampling(5)).text()
    assert model.predict(pd.DataFrame({"prompt": ["Are we still"]}), params={"max_new_tokens": 5})["text"][0] == want


def test_the_champion_loads_from_the_code_it_carries_without_this_repository(store, tmp_path) -> None:
    """A fresh interpreter with the repository off sys.path: the model's own code/ is what runs."""
    script = f"""
import json, sys
sys.path = [p for p in sys.path if p not in ("", {str(ROOT)!r})]
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model("models:/{CLASSIFIER}@{CHAMPION}")
out = model.predict(pd.DataFrame({{"text": ["Win a free prize now"]}}))
print(json.dumps({{"label": out["label"][0], "probabilities": out["probabilities"][0],
                  "model_code": sys.modules["model"].__file__, "steps_code": sys.modules["steps"].__file__}}))
"""
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.uri}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    for module in ("model_code", "steps_code"):
        assert not Path(got[module]).is_relative_to(ROOT) and f"{os.sep}code{os.sep}" in got[module]
    (label, probs), = classify(load_folder(store.folders["finetune_classifier"], "c", "cpu"), ["Win a free prize now"])
    assert got["label"] == label and got["probabilities"] == pytest.approx(probs, abs=1e-6)


def test_mlflow_models_serve_answers_invocations_with_the_champion(store, tmp_path) -> None:
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.uri,
           # MLflow starts uvicorn by name: the environment's scripts must be on PATH, as in an activated venv.
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{CLASSIFIER}@{CHAMPION}",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base, server, tmp_path / "serve.log")
        status, body = post(f"{base}/invocations", {"dataframe_records": [{"text": t} for t in tiny_models.TEXTS]})
        assert status == 200, body
        want = classify(load_folder(store.folders["finetune_classifier"], "c", "cpu"), tiny_models.TEXTS)
        predictions = body["predictions"]
        assert [p["label"] for p in predictions] == [label for label, _ in want]
        for got, (_, probs) in zip(predictions, want):
            assert got["probabilities"] == pytest.approx(probs, abs=1e-6)
        status, body = post(f"{base}/invocations", {"inputs": {"txt": ["no such column"]}})
        assert status == 400 and "missing inputs ['text']" in body["message"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the uvicorn process it started
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def wait_until_up(base: str, server: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"mlflow models serve exited:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"{base}/ping", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"mlflow models serve did not answer /ping in {timeout} s:\n{log.read_text()[-3000:]}")


def post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())
