"""Training recipes: what an objective brings to the one training pipeline.

A recipe is the objective-specific part of a run: it checks the config before anything is
written, builds the task and the batches it trains on, and says what the run exports for serving
(contract fields) and reports. ``pipeline.train_run`` does everything else the same way for every
objective (features, model, Trainer, evaluation, export). Objectives with a plain task
(``objectives.tasks.register_task``) get ``TaskRecipe``; an objective with its own data loop
registers its recipe under its name (MOBIUS: ``mobius.recipe``), so no command or stage branches
on an objective's name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from twotower.config import RunConfig
from twotower.errors import ConfigError
from twotower.features.dataset import EncodedLog, ItemCorpus
from twotower.models import build_model
from twotower.objectives.tasks import TASKS, build_task
from twotower.run import RunDir
from twotower.runs import RunData
from twotower.towers.embedding import FeatureSchema


@dataclass
class Prepared:
    """The task, its batch source and the batch count per epoch (None: unknown, streamed)."""

    task: nn.Module
    batches: Any  # has .batches(batch_size, epoch, seed, skip), like EncodedLog
    num_batches: int | None = None
    state: dict = field(default_factory=dict)  # anything ``report`` needs
    #: more validation metrics from the same ranking (``evaluate_requests(extra=...)``)
    validation_metrics: Any = None


class Recipe:
    """The default recipe: the objective's registered task over the clicked (or all) rows."""

    def check(self, cfg: RunConfig) -> None:
        """Refuse a config this objective cannot train, before anything is written."""

    def columns(self, cfg: RunConfig) -> dict[str, str]:
        """Log columns the recipe reads besides the features -> the config field naming each
        (checked with the other inputs, before the run folder exists)."""
        return {}

    def build_model(self, cfg: RunConfig, schema: FeatureSchema) -> nn.Module:
        """The model trained (and saved) for ``cfg.model``; a recipe may wrap it (LDM's two
        heads), as a registered model so that ``load_run`` rebuilds the same thing."""
        return build_model(cfg.model, schema)

    def prepare(self, cfg: RunConfig, data: RunData, corpus: ItemCorpus, stream: bool) -> Prepared:
        raise NotImplementedError

    def bind(self, prepared: Prepared, model: nn.Module) -> None:
        """Hand the model to a batch source that needs it (e.g. to mine with it); default none."""

    def begin(self, prepared: Prepared, run: RunDir, resumed: bool) -> None:
        """Once the run folder exists, before the Trainer starts: train or load what the task
        needs besides the model (DMTL's teacher) and write it into the run folder."""

    def contract(self, cfg: RunConfig) -> dict:
        """Fields the run adds to its similarity contract (what serving must apply)."""
        return {}

    def report(self, cfg: RunConfig, prepared: Prepared, train_seconds: float) -> dict:
        """Sections the run adds to ``report.json``."""
        return {}


class TaskRecipe(Recipe):
    def prepare(self, cfg: RunConfig, data: RunData, corpus: ItemCorpus, stream: bool) -> Prepared:
        task = build_task(cfg.objective, corpus.features, data.features.item_id, cfg.train.seed)
        train = data.train_source(task.positives_only, stream)
        num = train.num_batches(cfg.train.batch_size) if isinstance(train, EncodedLog) else None
        return Prepared(task, train, num)


#: objective name -> its recipe (objectives without one use TaskRecipe)
RECIPES: dict[str, Recipe] = {}


def register_recipe(name: str) -> Callable[[type[Recipe]], type[Recipe]]:
    """Class decorator: train ``objective.name: <name>`` with this recipe."""

    def wrap(cls: type[Recipe]) -> type[Recipe]:
        if name in RECIPES and type(RECIPES[name]) is not cls:
            raise ValueError(f"recipe for objective {name!r} registered twice")
        RECIPES[name] = cls()
        return cls

    return wrap


def recipe_for(cfg: RunConfig) -> Recipe:
    name = cfg.objective.name
    if name in RECIPES:
        return RECIPES[name]
    if name in TASKS:
        return TaskRecipe()
    raise ConfigError(f"objective.name: {name!r} has neither a task nor a recipe registered "
                      f"(known: {', '.join(sorted(set(TASKS) | set(RECIPES)))})")
