"""Consistency with the later stages of the funnel (MISSION.md section E): the DMTL recipe
(distil a multi-task ranker) and the LDM recipe (learn the ranker's order from its log).
Importing the package registers both (``objective.name: dmtl`` / ``ldm``)."""
from twotower.consistency import dmtl, ldm  # noqa: F401

__all__ = ["dmtl", "ldm"]
