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
