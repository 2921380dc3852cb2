"""Using a trained model: load it by folder or MLflow URI (`loading.py`), stream generated text
(`streaming.py`), keep a chat within the context window (`chat.py`), classify texts
(`classify.py`). The command line (`pipelines/inference.py`) and the server build on these."""
