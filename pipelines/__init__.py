"""Prefect flows, one per DVC stage: each wires steps inside one flow run and one MLflow run."""

import os


def apply_env_defaults() -> None:
    """Set before Prefect is imported anywhere (a user's own setting of any of them wins)."""
    # No usage telemetry from an offline pipeline, and our own `gptpipe.*` loggers show up in
    # Prefect's run logs next to its own.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Nor from MLflow, whose telemetry client starts a thread per process to fetch its config.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "gptpipe")
    # Our loggers also run outside flows (tests, notebooks): no warning for each such record.
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")


apply_env_defaults()


def show_info_logs() -> None:
    """Our `gptpipe.*` loggers speak at INFO (Prefect ships them to its run logs: see
    PREFECT_LOGGING_EXTRA_LOGGERS above). Called by the modules that define flows, not at package
    import: a stage command's client must not pay for importing logging."""
    import logging

    logging.getLogger("gptpipe").setLevel(logging.INFO)

# Stage name -> (module, flow function). Modules are imported on demand: each stage process
# pays only for its own imports.
STAGES: dict[str, tuple[str, str]] = {
    "download": ("pipelines.download", "download_flow"),
    "tokenize": ("pipelines.tokenize", "tokenize_flow"),
    "pretrain": ("pipelines.pretrain", "pretrain_flow"),
    "finetune_classifier": ("pipelines.finetune_classifier", "finetune_classifier_flow"),
    "label_efficiency": ("pipelines.label_efficiency", "label_efficiency_flow"),
    "finetune_instruct": ("pipelines.finetune_instruct", "finetune_instruct_flow"),
    "finetune_preference": ("pipelines.finetune_preference", "finetune_preference_flow"),
    "evaluate": ("pipelines.evaluate", "evaluate_flow"),
}
