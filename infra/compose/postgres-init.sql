-- Runs once, when the postgres volume is first created: MLflow's own database next to llc's.
CREATE DATABASE mlflow;
