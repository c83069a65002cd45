"""The search: its space (YAML), a sweep's options, the Optuna study, and the sweep's folder of trials (no Ray)."""
