"""What the warm runner builds once before it serves (pipelines/preload.py): each piece must give
a child exactly what it would have built itself."""

from __future__ import annotations

import weakref

import mlflow.store.db.utils as db_utils
import pydantic

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
