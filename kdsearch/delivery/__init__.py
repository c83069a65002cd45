"""What kdsearch hands over: export formats, predict, the registered MLflow model and its own code."""
