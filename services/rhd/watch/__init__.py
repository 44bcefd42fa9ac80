"""`rhd watch`: the dashboard's figures computed from the services' Prometheus metrics, and the diagnoses as they
arrive."""
