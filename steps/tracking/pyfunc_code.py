"""The file MLflow runs to build a logged gptpipe model (MLflow's models-from-code): the model
object is made here, from code shipped with the model, instead of being unpickled."""

import mlflow

from steps.tracking.pyfunc_models import GptPipeModel

mlflow.models.set_model(GptPipeModel())
