"""Shapley values: estimators and the image-patch game."""
