"""Class-Aware Masking (CAM): InfoNCE whose softmax drops in-batch candidates that are valid positives.

A mixed-task batch holds many "negatives" that are really positives for some anchor: two titles of one category share
the label that is their positive, the translation of an anchor's positive is a valid positive too. CAM sets their
logits to -inf before the softmax and changes nothing else, so with no shared class ids, no identical positive texts
and no task policy it is MultipleNegativesRankingLoss to the last bit (tests/test_cam_loss.py proves it).

The per-example metadata rides in the dataset's ``label`` column (the sentence-transformers collator stacks it into
``labels``), one list of int64 per row, built by :func:`encode_cam_label`::

    [anchor_class, task_type, positive_text_hash, neg_class_1..neg_class_K, neg_text_hash_1..neg_text_hash_K]
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from sentence_transformers.base.losses.gradcache import CachedLossMixin, has_static_embedding_input
from sentence_transformers.base.losses.merged_forward import embed_columns
from sentence_transformers.util import all_gather, all_gather_with_grad, cos_sim, get_rank
from torch import Tensor, nn

from compass.errors import CompassError
from compass.tasks import TASK_IDS

# Class id meaning "no equivalence class known": never matches anything, so it never masks.
NO_CLASS = 0
# Sentinels standing in for NO_CLASS inside cam_mask, different on the two sides so they never match each other.
_NEVER_ANCHOR, _NEVER_CANDIDATE = -(2**63), -(2**63) + 1
# Canonical task ids (compass.tasks, the one task vocabulary); a trainer may pass its own mapping to both
# encode_cam_label and CAMLoss.
DEFAULT_TASK_IDS: dict[str, int] = dict(TASK_IDS)
# A sensible policy for the trainer to opt into: a bare category label is a meaningless negative for any free-text
# anchor (CAMLoss itself defaults to no policy, so that its behaviour is exactly what its arguments say).
DEFAULT_TASK_POLICY: dict[str, set[str]] = {t: {"title2category"} for t in DEFAULT_TASK_IDS if t != "title2category"}


def stable_int64(s: str) -> int:
    """First 8 bytes of sha256(s) as a signed int64: stable across processes and runs, unlike ``hash()``."""
    return int.from_bytes(hashlib.sha256(s.encode("utf-8")).digest()[:8], "big", signed=True)


def encode_cam_label(
    class_id: str | None,
    task: str,
    positive: str,
    negatives: list[tuple[str, str | None]],
    task_ids: Mapping[str, int] | None = None,
) -> list[int]:
    """The ``label`` column value of one row: see the module docstring for the layout.

    ``negatives`` is ``[(text, class_id), ...]`` in the order of the negative columns. A missing class id (None or
    "") becomes NO_CLASS, which masks nothing: classless examples must not all collide on the hash of "".
    """
    task_ids = DEFAULT_TASK_IDS if task_ids is None else task_ids
    if task not in task_ids:
        raise CompassError(f"task {task!r} is not in task_ids {sorted(task_ids)}: add it to the task_ids mapping")

    def cls(c: str | None) -> int:
        return NO_CLASS if not c else stable_int64(c)

    return [
        cls(class_id),
        int(task_ids[task]),
        stable_int64(positive),
        *(cls(c) for _, c in negatives),
        *(stable_int64(t) for t, _ in negatives),
    ]


def _policy_matrix(task_policy: Mapping[str | int, Iterable[str | int]] | None, task_ids: Mapping[str, int]) -> Tensor:
    """(T, T) bool: [anchor_task, candidate_task] is True when such candidates are masked for such anchors."""
    size = max(task_ids.values(), default=-1) + 1

    def tid(t: str | int) -> int:
        if isinstance(t, int):
            return t
        if t not in task_ids:
            raise CompassError(f"task_policy names task {t!r}, which is not in task_ids {sorted(task_ids)}")
        return task_ids[t]

    pairs = [(tid(a), tid(c)) for a, cs in (task_policy or {}).items() for c in cs]
    size = max([size, *(max(p) + 1 for p in pairs)])
    matrix = torch.zeros(size, size, dtype=torch.bool)
    for a, c in pairs:
        matrix[a, c] = True
    return matrix


def cam_mask(
    a_class: Tensor,
    a_task: Tensor,
    a_text: Tensor,
    a_index: Tensor,
    c_class: Tensor,
    c_task: Tensor,
    c_text: Tensor,
    c_owner: Tensor,
    mask_same_class: bool = True,
    mask_same_text: bool = True,
    policy: Tensor | None = None,
) -> Tensor:
    """(n_anchors, n_candidates) bool, True = drop the candidate from that anchor's softmax. Vectorised, no loops.

    Anchor side (n_a,): class, task, text hash of its own positive, global example index. Candidate side (n_c,):
    class, task of the example it comes from, text hash, owning example index. Candidates owned by the anchor's own
    example (its positive and its hard negatives) are never masked: the positive must stay, and a hard negative was
    chosen as a negative for this very anchor, so a class it shares by accident (a mining slip) is the miner's
    business, not the loss's.
    """
    # Each term is one or two elementwise ops over the (n_a, n_c) grid: the mask must cost nothing next to the step.
    mask = torch.zeros(a_class.size(0), c_class.size(0), dtype=torch.bool, device=a_class.device)
    if mask_same_class:
        # NO_CLASS on either side must never match: move the two sides' NO_CLASS to two different sentinels
        # (vector ops, instead of a third (n_a, n_c) op); a real hash equal to a sentinel is a 2^-64 event.
        a_cls = a_class.masked_fill(a_class == NO_CLASS, _NEVER_ANCHOR)
        c_cls = c_class.masked_fill(c_class == NO_CLASS, _NEVER_CANDIDATE)
        mask |= a_cls[:, None] == c_cls[None, :]
    if mask_same_text:
        mask |= a_text[:, None] == c_text[None, :]
    if policy is not None and policy.any():
        if int(a_task.max()) >= policy.size(0) or int(c_task.max()) >= policy.size(0) or int(a_task.min()) < 0:
            raise CompassError(
                f"a task id in the label column is outside 0..{policy.size(0) - 1}, the task_ids mapping given to "
                "CAMLoss: pass CAMLoss the same task_ids used by encode_cam_label"
            )
        policy = policy.to(a_task.device)
        if policy.size(0) <= 62:
            # row t of the policy as a bit set: one AND over the grid instead of a 2-D gather
            bits = (policy.long() << torch.arange(policy.size(0), device=policy.device)).sum(dim=1)
            mask |= (bits[a_task][:, None] & (1 << c_task)[None, :]) != 0
        else:
            mask |= policy[a_task[:, None], c_task[None, :]]
    mask &= a_index[:, None] != c_owner[None, :]
    return mask


class CAMLoss(nn.Module):
    def __init__(
        self,
        model: nn.Module,
        temperature: float = 0.05,
        symmetric: bool = False,
        mask_same_class: bool = True,
        mask_same_text: bool = True,
        task_policy: Mapping[str | int, Iterable[str | int]] | None = None,
        gather_across_devices: bool = False,
        task_ids: Mapping[str, int] | None = None,
    ) -> None:
        """
        InfoNCE over (anchor, positive, negative_1, ..., negative_K) with Class-Aware Masking (Compass-Embedding v4).

        Scores s_ij = cos(a_i, c_j) / temperature over every candidate c in the batch (all positives, all hard
        negatives). For anchor i, a candidate j that is not i's own positive or one of i's own hard negatives gets
        logit -inf when it is a valid positive for i: the same class id (a positive candidate carries its example's
        class, a hard negative its own neg_class), the same text as i's positive, or (``task_policy``) a task type
        that makes it a meaningless negative for i's task, e.g. ``{"query2title": {"title2category"}}`` masks category
        labels (the positives and hard negatives of title2category examples) for query anchors.

        Args:
            model: SentenceTransformer model.
            temperature: softmax temperature; ``scale = 1 / temperature`` as in MultipleNegativesRankingLoss.
            symmetric: add the positive -> anchors term (the same mask, transposed) and average the two directions,
                as MultipleNegativesRankingLoss(directions=("query_to_doc", "doc_to_query"),
                partition_mode="per_direction") does.
            mask_same_class: mask candidates sharing the anchor's class id (NO_CLASS = 0 never matches).
            mask_same_text: mask candidates whose text hash equals that of the anchor's positive.
            task_policy: {anchor task: candidate tasks to mask}, names from ``task_ids`` or raw ids.
            gather_across_devices: all-gather embeddings (with gradient through the local shard) and labels across
                torch.distributed ranks, so the softmax and the masking span the global batch. Every rank must
                hold the same per-device batch size, as in the library.
            task_ids: task name -> id mapping used by encode_cam_label (default DEFAULT_TASK_IDS).

        Inputs:
            +-------------------------------------------------+---------------------------------------------------+
            | Inputs                                          | Labels                                            |
            +=================================================+===================================================+
            | (anchor, positive) pairs                        | (B, 3): [class, task, pos_hash]                   |
            +-------------------------------------------------+---------------------------------------------------+
            | (anchor, positive, negative_1, ..., negative_K) | (B, 3 + 2K): [class, task, pos_hash,              |
            |                                                 | neg_class_1..K, neg_hash_1..K]                    |
            +-------------------------------------------------+---------------------------------------------------+

        Relations:
            - Equals :class:`MultipleNegativesRankingLoss` (scale = 1 / temperature) when nothing is masked.
            - :class:`CachedCAMLoss` gives the same loss and gradients with GradCache, for batches beyond memory.

        Example:
            ::

                from datasets import Dataset
                from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
                from compass.train.cam_loss import CAMLoss, encode_cam_label

                model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
                rows = [
                    ("kemeja batik pria", "Kemeja Batik Pria Lengan Panjang", "fashion/shirts", "query2title"),
                    ("Kemeja Flanel Kotak", "Kemeja", "fashion/shirts", "title2category"),
                ]
                train_dataset = Dataset.from_dict({
                    "anchor": [r[0] for r in rows],
                    "positive": [r[1] for r in rows],
                    "label": [encode_cam_label(r[2], r[3], r[1], []) for r in rows],
                })
                loss = CAMLoss(model, task_policy={"query2title": {"title2category"}})
                trainer = SentenceTransformerTrainer(model=model, train_dataset=train_dataset, loss=loss)
                trainer.train()
        """
        super().__init__()
        if not temperature > 0:
            raise CompassError(f"CAMLoss temperature must be > 0, got {temperature}")
        self.model = model
        self.temperature = float(temperature)
        self.scale = 1.0 / self.temperature
        self.symmetric = symmetric
        self.mask_same_class = mask_same_class
        self.mask_same_text = mask_same_text
        self.task_ids = dict(DEFAULT_TASK_IDS if task_ids is None else task_ids)
        self.task_policy = {a: set(cs) for a, cs in (task_policy or {}).items()}
        # A plain attribute, not a buffer: it must not land in the state_dict of the model being trained.
        self._policy = _policy_matrix(self.task_policy, self.task_ids) if self.task_policy else None
        self.gather_across_devices = gather_across_devices
        self._masked, self._pairs = 0, 0

    def pop_masked_share(self) -> float | None:
        """Share of (anchor, candidate) pairs masked since the last call (None when no batch was seen); the
        trainer logs it next to the loss."""
        if not self._pairs:
            return None
        share = float(self._masked) / self._pairs
        self._masked, self._pairs = 0, 0
        return share

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        embeddings = embed_columns(self.model, sentence_features)
        return self.compute_loss_from_embeddings(embeddings, labels)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor) -> Tensor:
        """embeddings: [anchors (B, D), positives (B, D), neg_1 (B, D), ..., neg_K (B, D)]; labels (B, 3 + 2K)."""
        batch = self._prepare(embeddings, labels)
        return self._per_anchor_loss(batch, 0, batch["local_size"]).mean()

    def _prepare(self, embeddings: list[Tensor], labels: Tensor) -> dict[str, Any]:
        """Gather (if asked) and lay out the global batch: candidates (Bw*(1+K), D) as
        [positives of all ranks, neg_1 of all ranks, ...], exactly MultipleNegativesRankingLoss's order."""
        if len(embeddings) < 2:
            raise CompassError(f"CAMLoss needs (anchor, positive, negatives...) columns, "
                               f"got {len(embeddings)} column(s)")
        num_neg = len(embeddings) - 2
        anchors, docs = embeddings[0], list(embeddings[1:])
        local_size = anchors.size(0)
        expected = (local_size, 3 + 2 * num_neg)
        if labels is None or labels.dim() != 2 or tuple(labels.shape) != expected:
            got = None if labels is None else tuple(labels.shape)
            raise CompassError(
                f"CAMLoss label column: expected shape {expected} for {num_neg} negative column(s), got {got}: "
                "build the dataset's 'label' column with compass.train.cam_loss.encode_cam_label"
            )
        labels = labels.to(device=anchors.device, dtype=torch.long)
        offset = 0
        if self.gather_across_devices:
            # Local shard keeps its gradient; the library's helper (torch.distributed.nn.all_gather) sums the
            # other ranks' gradient contributions back into it on backward.
            anchors = all_gather_with_grad(anchors)
            docs = [all_gather_with_grad(d) for d in docs]
            labels = all_gather(labels)
            offset = get_rank() * local_size
        world_size_b = anchors.size(0)
        neg_class = labels[:, 3 : 3 + num_neg].T.reshape(-1)  # (K*Bw,) block k = neg_k of every example
        neg_text = labels[:, 3 + num_neg :].T.reshape(-1)
        return {
            "anchors": anchors,  # (Bw, D)
            "positives": docs[0],  # (Bw, D)
            "candidates": torch.cat(docs, dim=0),  # (Bw*(1+K), D)
            "a_class": labels[:, 0],
            "a_task": labels[:, 1],
            "a_text": labels[:, 2],
            "c_class": torch.cat([labels[:, 0], neg_class]),
            "c_task": labels[:, 1].repeat(1 + num_neg),
            "c_text": torch.cat([labels[:, 2], neg_text]),
            "c_owner": torch.arange(world_size_b, device=labels.device).repeat(1 + num_neg),
            "offset": offset,
            "local_size": local_size,
        }

    def _mask(self, b: dict[str, Any], a_idx: Tensor, c_idx: Tensor | None = None) -> Tensor:
        """Mask for anchors a_idx (global example indices) against candidates c_idx (all when None)."""
        c = slice(None) if c_idx is None else c_idx
        return cam_mask(
            b["a_class"][a_idx], b["a_task"][a_idx], b["a_text"][a_idx], a_idx,
            b["c_class"][c], b["c_task"][c], b["c_text"][c], b["c_owner"][c],
            self.mask_same_class, self.mask_same_text, self._policy,
        )  # fmt: skip

    def _per_anchor_loss(self, b: dict[str, Any], begin: int, end: int) -> Tensor:
        """(end - begin,) loss of local anchors [begin, end); the cached variant calls it chunk by chunk."""
        rows = torch.arange(b["offset"] + begin, b["offset"] + end, device=b["anchors"].device)  # global indices
        arange = torch.arange(end - begin, device=rows.device)
        # Same ops in the same order as MultipleNegativesRankingLoss, so that with an empty mask the loss matches
        # it bit for bit and the gradients to float rounding (autograd accumulates in graph order).
        local_anchors, local_positives = b["anchors"][rows], b["positives"][rows]
        scores = cos_sim(local_anchors, b["candidates"])  # (n, Bw*(1+K))
        if self.symmetric:
            # positive i -> every anchor j; anchor j is dropped when positive i is masked for anchor j
            back = cos_sim(b["anchors"], local_positives).T  # (n, Bw)
        mask = self._mask(b, rows)  # (n, Bw*(1+K))
        # Counted for the run report (share of in-batch pairs masked per logged step); a detached sum, no sync here.
        self._masked = self._masked + mask.sum().detach()
        self._pairs += mask.numel()
        scores = (scores * self.scale).masked_fill(mask, -torch.inf)
        positive_scores = scores[arange, rows]
        log_z = torch.logsumexp(scores, dim=1)
        if self.symmetric:
            all_rows = torch.arange(b["anchors"].size(0), device=rows.device)
            back = (back * self.scale).masked_fill(self._mask(b, all_rows, rows).T, -torch.inf)
            log_z = (log_z + torch.logsumexp(back, dim=1)) / 2
        return -(positive_scores - log_z)

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "symmetric": self.symmetric,
            "mask_same_class": self.mask_same_class,
            "mask_same_text": self.mask_same_text,
            "task_policy": {str(a): sorted(map(str, cs)) for a, cs in self.task_policy.items()},
            "task_ids": self.task_ids,
            "gather_across_devices": self.gather_across_devices,
        }

    @property
    def citation(self) -> str:
        return """
@misc{compass2025,
    title={Compass-Embedding v4: Robust Contrastive Learning for Multilingual E-commerce Embeddings},
    author={Shopee},
    year={2025},
}
"""


class CachedCAMLoss(CachedLossMixin, nn.Module):
    def __init__(
        self,
        model: nn.Module,
        temperature: float = 0.05,
        symmetric: bool = False,
        mask_same_class: bool = True,
        mask_same_text: bool = True,
        task_policy: Mapping[str | int, Iterable[str | int]] | None = None,
        gather_across_devices: bool = False,
        task_ids: Mapping[str, int] | None = None,
        mini_batch_size: int = 32,
        show_progress_bar: bool = False,
    ) -> None:
        """
        :class:`CAMLoss` with GradCache (https://huggingface.co/papers/2101.06983): same loss and gradients, memory
        bounded by ``mini_batch_size``. The three GradCache steps (embed without graph, loss + backward to the cached
        embeddings, re-embed with graph and chain the cached gradients) come from sentence-transformers'
        ``CachedLossMixin``; this class only supplies ``calculate_loss``, which scores ``mini_batch_size`` anchor rows
        at a time so the (B, B*(1+K)) score matrix is never whole either.

        Args: as :class:`CAMLoss`, plus ``mini_batch_size`` (rows per embedding and scoring chunk).

        Inputs: as :class:`CAMLoss`.

        Example:
            ::

                loss = CachedCAMLoss(model, mini_batch_size=64, task_policy={"query2title": {"title2category"}})
        """
        super().__init__()
        if has_static_embedding_input(model):
            raise CompassError(
                "CachedCAMLoss cannot mini-batch a StaticEmbedding model (its inputs have no batch axis): "
                "use CAMLoss (drop --cached) for static models"
            )
        if mini_batch_size < 1:
            raise CompassError(f"CachedCAMLoss mini_batch_size must be >= 1, got {mini_batch_size}")
        self.model = model
        self.loss = CAMLoss(
            model, temperature, symmetric, mask_same_class, mask_same_text, task_policy, gather_across_devices, task_ids
        )
        self.mini_batch_size = mini_batch_size
        self.show_progress_bar = show_progress_bar

    def calculate_loss(self, reps: list[list[Tensor]], labels: Tensor | None = None, *, with_backward: bool = False):
        batch = self.loss._prepare([torch.cat(r) for r in reps], labels)
        size = batch["local_size"]
        losses = []
        for begin in range(0, size, self.mini_batch_size):
            end = min(begin + self.mini_batch_size, size)
            chunk = self.loss._per_anchor_loss(batch, begin, end).sum() / size
            if with_backward:
                chunk.backward()
                chunk = chunk.detach()
            losses.append(chunk)
        return sum(losses)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        sentence_features = list(sentence_features)
        if len(sentence_features) < 2:
            raise CompassError(f"CachedCAMLoss needs (anchor, positive, ...) columns, got {len(sentence_features)}")
        return self.forward_cached(sentence_features, labels)

    def get_config_dict(self) -> dict[str, Any]:
        return {**self.loss.get_config_dict(), "mini_batch_size": self.mini_batch_size}

    @property
    def citation(self) -> str:
        return self.loss.citation
