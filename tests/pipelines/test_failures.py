"""A failed stage says so once (pipelines/failures.py): an expected error as its message and fix,
a bug as one traceback; the whole log, tracebacks included, in logs/<stage>.log."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.failures import DEBUG_ENV, QuietFailures, StageLog
from steps.config import ConfigError
from steps.errors import ExpectedError, is_expected

ROOT = Path(__file__).resolve().parents[2]
BAD_RECORD = "missing field 'text' (fields present: body, label)"


def _stage_with_a_bad_record(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A project folder whose classification CSV has no `text` column: the download stage's reader
    stops at its first record."""
    work = tmp_path / "project"
    (work / "data" / "local").mkdir(parents=True)
    (work / "data" / "local" / "sms.csv").write_text("body,label\nhello there,ham\nbuy now,spam\n")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["download"]["classification"] = {"source": {"kind": "local", "path": "data/local/sms.csv"},
                                            "format": "csv", "labels": ["ham", "spam"]}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", DEBUG_ENV))}
    env.update(PYTHONPATH=str(ROOT))
    return work, env


def test_a_bad_record_is_said_once_and_the_stage_fails(prefect_api, tmp_path: Path) -> None:
    work, env = _stage_with_a_bad_record(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "pipelines", "download"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    terminal = proc.stdout + proc.stderr
    assert proc.returncode == 2, terminal
    assert terminal.count(BAD_RECORD) == 1, terminal
    assert "gptpipe download: data/local/sms.csv:2: " + BAD_RECORD in proc.stderr
    assert "Traceback" not in terminal
    assert len(terminal.splitlines()) <= 10, terminal  # was ~150 lines: 3 tracebacks, the error 6 times
    log = (work / "logs" / "download.log").read_text()
    assert "Traceback" in log and "DataError: data/local/sms.csv:2: " + BAD_RECORD in log
    assert "logs/download.log" in proc.stderr and "GPTPIPE_DEBUG=1" in proc.stderr


def _record(name: str, message: str, err: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(err), err, None) if err is not None else None
    return logging.LogRecord(name, logging.ERROR, __file__, 1, message, (), exc_info)


def test_the_terminal_filter_drops_prefects_repeats_of_a_failure_only() -> None:
    quiet = QuietFailures()
    err = ValueError("data.csv:3: bad label 'x'\nset download.classification.labels")
    assert quiet.filter(_record("prefect.flow_runs", "Beginning flow run 'a'"))
    assert not quiet.filter(_record("prefect.task_runs", "Task run failed with exception", err))
    assert not quiet.filter(_record("prefect.task_runs", "Finished in state Failed('ValueError: data.csv:3: "
                                                         "bad label 'x'\\nset ...')"))
    assert quiet.filter(_record("prefect.flow_runs", "Finished in state Completed()"))
    assert quiet.filter(_record("gptpipe.download", "data.csv:3: bad label 'x'"))  # our own loggers speak


def _failed(tmp_path: Path, monkeypatch, capsys, err: Exception) -> tuple[int, str, str]:
    monkeypatch.chdir(tmp_path)
    stage_log = StageLog("tokenize")
    try:
        raise err
    except Exception as raised:  # noqa: BLE001 - what stage_command catches
        status = stage_log.failed(raised)
    finally:
        stage_log.close()
    return status, capsys.readouterr().err, (tmp_path / "logs" / "tokenize.log").read_text()


def test_an_expected_error_is_its_message_with_the_traceback_in_the_log(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    status, err, log = _failed(tmp_path, monkeypatch, capsys, ConfigError("model.emb_dim: set it"))
    assert status == 2
    assert err.startswith("gptpipe tokenize: model.emb_dim: set it\n") and "Traceback" not in err
    assert "Traceback" in log and "ConfigError: model.emb_dim: set it" in log


def test_the_debug_switch_prints_the_traceback_too(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv(DEBUG_ENV, "1")
    status, err, _ = _failed(tmp_path, monkeypatch, capsys, ConfigError("model.emb_dim: set it"))
    assert status == 2 and "Traceback" in err and err.count("gptpipe tokenize: model.emb_dim: set it") == 1


def test_a_bug_shows_its_traceback(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    status, err, log = _failed(tmp_path, monkeypatch, capsys, KeyError("vocab"))
    assert status == 1
    assert "Traceback" in err and "KeyError: 'vocab'" in err and "a bug rather than bad input" in err
    assert "KeyError: 'vocab'" in log


def test_which_errors_are_expected() -> None:
    from steps.data.readers import DataError

    assert is_expected(ConfigError("x")) and is_expected(DataError("x"))
    assert is_expected(type("Full", (ExpectedError,), {})("disk full"))
    assert not is_expected(ValueError("x")) and not is_expected(KeyError("x"))


def test_debug_flag_sets_the_environment_for_child_processes(monkeypatch, capsys) -> None:
    from pipelines.__main__ import main

    monkeypatch.delenv(DEBUG_ENV, raising=False)
    assert main(["--debug", "stages"]) == 0
    assert os.environ[DEBUG_ENV] == "1"
    monkeypatch.delenv(DEBUG_ENV)


@pytest.fixture(autouse=True)
def _no_leftover_log_file(tmp_path):
    """StageLog adds its file to the root logger; closing it takes it away again."""
    yield
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    assert not [h for h in files if Path(h.baseFilename).is_relative_to(tmp_path)]
