"""Self-supervised item views by feature masking, and the contrastive loss between them.

Yao et al., "Self-supervised Learning for Large-scale Item Recommendations" (CIKM 2021).

Two augmented views of each item are made by masking features: a masked feature is replaced by
its "absent" value, 0 for every kind (the padding / out-of-vocabulary row of an id, an all-padding
sequence or text, the training mean of a standardised dense number), so masking works with any
feature kind and any model — the item tower simply sees the feature as missing. The two views of
the same item are positives of each other and the other items of the batch are negatives
(``view_contrastive_loss``); the batch is drawn uniformly from the corpus, not from the click
distribution, as the paper insists (``uniform_item_rows``).

Masking kinds (``make_views``):

* ``rfm`` — random feature masking: each view masks its own random half of the features;
* ``crfm`` — complementary RFM: view 1 masks a random half, view 2 masks exactly the rest, so the
  two views share no masked feature;
* ``cfm`` — correlated feature masking: a seed feature is drawn and masked together with the
  features of highest mutual information with it (``feature_mutual_information``, computed from
  the training corpus) up to half of them; view 2 masks the complement. Masking correlated
  features together stops the tower from reading a masked feature back from its correlate.

``feature_dropout`` additionally zeroes single values (an id, a token of a sequence) at a rate.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from twotower.errors import ConfigError
from twotower.objectives.negatives import draws
from twotower.types import Features

MASKINGS = ("rfm", "crfm", "cfm")


def mask_features(features: Features, masked: list[str]) -> Features:
    """A copy of ``features`` with each named feature replaced by its absent value (zeros)."""
    return {name: (torch.zeros_like(x) if name in masked else x) for name, x in features.items()}


def feature_dropout(features: Features, rate: float, generator: torch.Generator,
                    keep: tuple[str, ...] = ()) -> Features:
    """Zero each id / token / dense value independently with probability ``rate``.

    ``keep`` names features never dropped. Padding stays padding: only values are zeroed.
    """
    if rate <= 0:
        return dict(features)
    out = {}
    for name, x in features.items():
        if name in keep:
            out[name] = x
            continue
        drop = torch.rand(x.shape, generator=generator) < rate
        out[name] = x.masked_fill(drop.to(x.device), 0)
    return out


def feature_mutual_information(columns: dict[str, np.ndarray], bins: int = 10) -> np.ndarray:
    """Pairwise mutual information (nats) between the features of an item table: ``[F, F]``.

    ``columns`` maps feature name -> encoded values of every corpus item (``[N]`` ids or dense
    numbers, ``[N, L]`` sequences / token lists). Each feature is first made discrete: ids as
    they are, dense numbers by ``bins`` quantile bins, a sequence by its first token (the most
    recent item / first word). The diagonal holds each feature's entropy.
    """
    names = list(columns)
    codes = [_discrete(np.asarray(columns[n]), bins) for n in names]
    f = len(names)
    mi = np.zeros((f, f))
    for a in range(f):
        for b in range(a, f):
            mi[a, b] = mi[b, a] = _mutual_information(codes[a], codes[b])
    return mi


def _discrete(values: np.ndarray, bins: int) -> np.ndarray:
    if values.ndim == 2:
        values = values[:, 0] if values.shape[1] else np.zeros(len(values), dtype=np.int64)
    if np.issubdtype(values.dtype, np.floating):
        edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
        return np.searchsorted(edges, values, side="right")
    return np.unique(values, return_inverse=True)[1]


def _mutual_information(x: np.ndarray, y: np.ndarray) -> float:
    n = len(x)
    if n == 0:
        return 0.0
    nx, ny = int(x.max()) + 1, int(y.max()) + 1
    joint = np.bincount(x.astype(np.int64) * ny + y, minlength=nx * ny).reshape(nx, ny) / n
    px, py = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / (px @ py)[nz])).sum())


def correlated_mask(names: list[str], mutual_information: np.ndarray, seed_feature: int) -> list[str]:
    """CFM: the seed feature plus the features of highest mutual information with it, half in all."""
    half = max(1, len(names) // 2)
    order = [j for j in np.argsort(-mutual_information[seed_feature], kind="stable") if j != seed_feature]
    return [names[seed_feature]] + [names[j] for j in order[: half - 1]]


def make_views(features: Features, names: list[str], masking: str, generator: torch.Generator,
               mutual_information: np.ndarray | None = None) -> tuple[Features, Features, list[str], list[str]]:
    """Two masked views of the same items: ``(view1, view2, masked1, masked2)``.

    ``names`` are the item features that may be masked (at least two). One mask is drawn per
    batch (as in the paper), the same for every item of it.
    """
    if masking not in MASKINGS:
        raise ConfigError(f"objective.ssl.masking: {masking!r} is not one of {', '.join(MASKINGS)}")
    if len(names) < 2:
        raise ConfigError(f"objective.ssl needs at least two item features to mask, got {names}")
    half = len(names) // 2
    perm = torch.randperm(len(names), generator=generator).tolist()
    if masking == "rfm":
        masked1 = [names[j] for j in perm[:half]]
        second = torch.randperm(len(names), generator=generator).tolist()
        masked2 = [names[j] for j in second[:half]]
    elif masking == "crfm":
        masked1 = [names[j] for j in perm[:half]]
        masked2 = [n for n in names if n not in masked1]
    else:
        if mutual_information is None:
            raise ConfigError("objective.ssl.masking: cfm needs the features' mutual information")
        seed = int(torch.randint(len(names), (1,), generator=generator))
        masked1 = correlated_mask(names, mutual_information, seed)
        masked2 = [n for n in names if n not in masked1]
    return mask_features(features, masked1), mask_features(features, masked2), masked1, masked2


def view_contrastive_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE between two views of the same B items: ``z1[B, D]``, ``z2[B, D]`` -> scalar.

    Row i's positive is view 2 of item i, its negatives the other items' view 2 (the paper's
    in-batch softmax over the augmented pairs); both views are L2-normalised first, so the score
    is a cosine over ``temperature``. Rows of the same item drawn twice are not masked: with
    uniform draws from a large corpus they are rare.
    """
    z1 = F.normalize(z1.float(), dim=-1)
    z2 = F.normalize(z2.float(), dim=-1)
    logits = z1 @ z2.T / temperature  # [B, B]
    return F.cross_entropy(logits, torch.arange(len(z1), device=z1.device))


def uniform_item_rows(num_items: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    """Rows of the corpus drawn uniformly with replacement (not by popularity): ``LongTensor[batch]``."""
    if num_items < 1:
        raise ConfigError("objective.ssl needs a non-empty item corpus")
    return torch.randint(num_items, (batch,), generator=generator)


def tail_threshold(counts: np.ndarray, head_share: float = 0.2) -> float:
    """Training count at or below which an item is in the tail (the bottom 80% by frequency)."""
    if len(counts) == 0:
        return math.inf
    return float(np.quantile(counts, 1 - head_share))


class SelfSupervisedTask(torch.nn.Module):
    """Any retrieval task plus the SSL term: ``loss = task loss + weight x contrastive(views)``.

    Each step draws ``batch_size`` items uniformly from the corpus (``corpus``: encoded item
    features, one row per item), makes two masked views (``masking``), encodes both with the
    model's item tower (shared with retrieval, as in the paper) and adds the weighted InfoNCE
    between the views' retrieval vectors. Works with every model: it only calls
    ``encode_item`` / ``retrieval_item``.
    """

    def __init__(self, task: torch.nn.Module, corpus: Features | dict, cfg, seed: int = 0):
        super().__init__()
        self.task = task
        self.cfg = cfg
        self.names = list(corpus)
        self.corpus = {k: torch.as_tensor(np.asarray(v)) for k, v in corpus.items()}
        self.num_items = len(next(iter(self.corpus.values())))
        self.generator = torch.Generator().manual_seed(seed)
        self.mutual_information = (feature_mutual_information({k: np.asarray(v) for k, v in corpus.items()})
                                   if cfg.masking == "cfm" else None)
        # refuse a corpus with fewer than two maskable features now, not at the first step
        make_views({k: v[:2] for k, v in self.corpus.items()}, self.names, cfg.masking,
                   torch.Generator(), self.mutual_information)

    @property
    def positives_only(self) -> bool:
        return getattr(self.task, "positives_only", True)

    def _draw(self, n: int, generator: torch.Generator) -> Features:
        rows = uniform_item_rows(self.num_items, n, generator)
        return {k: v[rows] for k, v in self.corpus.items()}

    def loss(self, model, batch, step: int):
        loss, logs = self.task.loss(model, batch, step)
        generator = draws(self, self.generator)  # eval mode: fixed draws, the stream untouched
        items = self._draw(self.cfg.batch_size, generator)
        if self.cfg.dropout > 0:
            items = feature_dropout(items, self.cfg.dropout, generator)
        v1, v2, _, _ = make_views(items, self.names, self.cfg.masking, generator,
                                  self.mutual_information)
        device = batch.item_ids.device
        z1 = model.retrieval_item(model.encode_item({k: x.to(device) for k, x in v1.items()}))
        z2 = model.retrieval_item(model.encode_item({k: x.to(device) for k, x in v2.items()}))
        ssl = view_contrastive_loss(z1, z2, self.cfg.temperature)
        return loss + self.cfg.weight * ssl, {**logs, "ssl_loss": float(ssl.detach())}

    def get_extra_state(self) -> dict:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        if state and "generator" in state:
            self.generator.set_state(state["generator"])
