"""Teacher training."""
