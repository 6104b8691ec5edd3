"""MOBIUS data loop: cross-join augmentation, relevance teachers, bad-case sampling, the task, and
the recipe that trains it in the one pipeline (importing this package registers it)."""
from twotower.mobius import recipe  # noqa: F401  (registers the "mobius" recipe)
