"""The teacher: its weights (trained once, cached) and its outputs, computed once for a sweep's trials."""
