"""MLflow runs of a sweep: the runs, the UI, where the store is."""
