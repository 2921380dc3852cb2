"""Tests for what stage flows share (pipelines/stage.py): the body of a torchrun rank other than 0."""

from __future__ import annotations

import random

from pipelines.stage import NoTracking, StageContext, run_stage_rank


def test_a_rank_other_than_0_runs_the_body_seeded_without_mlflow_or_reports(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.yaml").write_text("seed: 7\n")
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
