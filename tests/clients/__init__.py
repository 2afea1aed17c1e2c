"""Scripts that drive the API with Airflow's official clients, each run in its own process with
that client's directory on PYTHONPATH (tests/integration/test_clients.py)."""
