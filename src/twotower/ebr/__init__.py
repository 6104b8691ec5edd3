"""Embedding-based retrieval practice (Facebook EBR): offline-mined hard negatives as a recipe."""
from twotower.ebr.recipe import HardNegativeRecipe, MinedLog  # noqa: F401  (registers the recipe)
