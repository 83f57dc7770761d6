-- Runs once, when the postgres volume is first initialised: POSTGRES_DB (mlflow) holds
-- MLflow's backend store; Airflow's metadata gets its own database, owned by the same user.
CREATE DATABASE airflow;
