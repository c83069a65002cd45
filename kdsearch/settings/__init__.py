"""What a setting's value may be: a typed value from YAML or --set, a schedule over training, a distribution to search."""
