"""Evaluation: students trained on distilled sets under a named protocol."""
