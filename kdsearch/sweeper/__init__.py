"""A sweep from start to finish: its plan, what its trials share, the run, the report and the summary."""
