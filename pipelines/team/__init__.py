"""Team mode: a PostgreSQL cluster, MLflow and Prefect servers on loopback (`gptpipe services`)."""
