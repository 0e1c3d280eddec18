"""Training losses, one registry (compass.registry.losses): name -> factory(model, cfg, task_ids, gather).

Adding a loss = a factory here (or in its own module imported below) with `@losses.register(name=...)`; `--loss NAME`
then selects it, and a misspelt name is refused with the nearest valid one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from compass.registry import losses

if TYPE_CHECKING:
    from compass.train.trainer import TrainConfig


def task_policy_for(task_ids: dict[str, int], policy: str) -> dict[str, set[str]] | None:
    """'default': a bare category label is a meaningless negative for every anchor that is not a title being
    categorised (a query's softmax should not be spent pushing it away from "Fashion > Shoes")."""
    if policy == "none" or "title2category" not in task_ids:
        return None
    return {t: {"title2category"} for t in task_ids if t != "title2category"}


@losses.register(name="infonce")
def infonce_loss(model, cfg: TrainConfig, task_ids: dict[str, int], gather: bool):
    """sentence-transformers' MultipleNegativesRankingLoss (cached: its GradCache variant)."""
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )

    kw: dict[str, Any] = {"scale": 1.0 / cfg.temperature, "gather_across_devices": gather}
    if cfg.symmetric:
        kw.update(directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction")
    if cfg.cached:
        return CachedMultipleNegativesRankingLoss(model, mini_batch_size=cfg.mini_batch_size, **kw)
    return MultipleNegativesRankingLoss(model, **kw)


@losses.register(name="cam")
def cam_loss(model, cfg: TrainConfig, task_ids: dict[str, int], gather: bool):
    """Class-Aware Masking (compass.train.cam_loss; cached: its GradCache variant)."""
    from compass.train.cam_loss import CachedCAMLoss, CAMLoss

    kw = {"temperature": cfg.temperature, "symmetric": cfg.symmetric, "gather_across_devices": gather,
          "task_policy": task_policy_for(task_ids, cfg.task_policy), "task_ids": task_ids}
    if cfg.cached:
        return CachedCAMLoss(model, mini_batch_size=cfg.mini_batch_size, **kw)
    return CAMLoss(model, **kw)


def make_loss(model, cfg: TrainConfig, task_ids: dict[str, int], gather: bool):
    return losses.get(cfg.loss)(model, cfg, task_ids, gather)
