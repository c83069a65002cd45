"""The training engine: one teacher-guided student run in plain PyTorch, and its evaluation."""
