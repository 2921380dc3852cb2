"""What the warm runner builds once before it serves (pipelines/preload.py): each piece must give
a child exactly what it would have built itself."""

from __future__ import annotations

import weakref
from types import SimpleNamespace

import mlflow.store.db.utils as db_utils
import pydantic
import pytest

from pipelines import preload


def test_the_pinned_schema_head_is_the_one_mlflow_reads(monkeypatch):
    fresh = db_utils._get_latest_schema_revision()
    # Restored after the test: the pin replaces the module's function.
    monkeypatch.setattr(db_utils, "_get_latest_schema_revision", db_utils._get_latest_schema_revision)
    preload.pin_mlflow_schema_head()
    assert db_utils._get_latest_schema_revision() == fresh and len(fresh) >= 8


def test_inherited_finalizers_skip_the_exit_but_later_ones_run():
    class Resource:
        pass

    before, after = Resource(), Resource()
    inherited = weakref.finalize(before, lambda: None)
    assert inherited.atexit
    preload.skip_inherited_finalizers()
    later = weakref.finalize(after, lambda: None)  # e.g. a stage's temporary folder
    assert not inherited.atexit and later.atexit
    assert inherited.alive  # not run, only left out of the exit


def test_prefects_deferred_models_are_completed():
    import prefect.client.schemas.actions as actions

    deferred = [m for m in vars(actions).values()
                if isinstance(m, type) and issubclass(m, pydantic.BaseModel) and m.__module__ == actions.__name__
                and not m.__pydantic_complete__]
    preload.complete_prefect_models()
    assert all(m.__pydantic_complete__ for m in deferred)
    assert actions.FlowRunCreate(flow_id="00000000-0000-0000-0000-000000000000").name is None


def test_prefect_shares_one_verifying_ssl_context_per_ca_file(monkeypatch):
    import ssl

    import certifi
    import prefect.client.orchestration as orchestration

    monkeypatch.setattr(orchestration, "ssl", ssl)  # restored after the test
    preload.share_prefect_ssl_context()
    shared = orchestration.ssl
    assert shared is not ssl
    context = shared.create_default_context(cafile=certifi.where())
    assert context is shared.create_default_context(cafile=certifi.where())
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.cert_store_stats()["x509_ca"] > 0
    # Prefect turns verification off on the context it builds without a CA file: never shared.
    assert shared.create_default_context() is not shared.create_default_context()
    assert shared.CERT_NONE is ssl.CERT_NONE


class RecordingClient:
    """Stands in for Prefect's sync client: records the calls; `fail_on` raises in that call."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[str] = []
        self.fail_on = fail_on

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name == self.fail_on:
            raise RuntimeError(f"{name} failed")

    def create_flow_run(self, flow, state):
        self._call(f"create_flow_run {flow.name} {state.type.value}")
        return SimpleNamespace(id="run-1", flow_id="flow-1")

    def set_flow_run_state(self, run_id, state):
        self._call(f"set_flow_run_state {state.type.value}")

    def read_flow_run(self, run_id):
        self._call("read_flow_run")

    def delete_flow_run(self, run_id):
        self._call(f"delete_flow_run {run_id}")

    def delete_flow(self, flow_id):
        self._call(f"delete_flow {flow_id}")

    def raise_for_api_version_mismatch_once(self):
        self._call("version check")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_the_warm_up_flow_run_goes_through_a_stages_states_and_is_deleted():
    client = RecordingClient()
    preload.exercise_flow_runs(client)
    assert client.calls == [f"create_flow_run {preload.WARM_UP_FLOW} PENDING", "set_flow_run_state RUNNING",
                            "read_flow_run", "set_flow_run_state COMPLETED", "delete_flow_run run-1",
                            "delete_flow flow-1"]
    failing = RecordingClient(fail_on="set_flow_run_state RUNNING")
    with pytest.raises(RuntimeError):
        preload.exercise_flow_runs(failing)
    assert failing.calls[-2:] == ["delete_flow_run run-1", "delete_flow flow-1"]  # deleted all the same


def test_only_the_runners_own_server_gets_a_warm_up_run(monkeypatch):
    import prefect.client.orchestration

    clients: list[RecordingClient] = []
    monkeypatch.setattr(prefect.client.orchestration, "get_client",
                        lambda sync_client: clients.append(RecordingClient()) or clients[-1])
    preload.warm_prefect("http://127.0.0.1:1/api")  # a team's server: only the version check
    preload.warm_prefect("http://127.0.0.1:1/api", own_server=True)
    assert clients[0].calls == ["version check"]
    assert clients[1].calls[0] == "version check" and clients[1].calls[-1] == "delete_flow flow-1"


def test_the_mlflow_rehearsal_makes_its_template_once_and_then_copies_it(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    monkeypatch.chdir(tmp_path)
    template = tmp_path / "prefect-home" / "gptpipe-warm" / f"mlflow-{mlflow.__version__}.db"
    preload.rehearse_mlflow()
    assert template.is_file()
    made = template.stat().st_mtime_ns
    preload.rehearse_mlflow()
    assert template.stat().st_mtime_ns == made  # copied, not rebuilt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prefect-home"]  # nothing else left behind
