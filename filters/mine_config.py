"""`compass mine`'s configuration: the guard parameters that make a negative set's identity, and their checks."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from compass.errors import CompassError
from compass.filters.mine_pool import TASK_RULES, rules_params, task_rule
from compass.filters.mine_search import GuardConfig

MINER_VERSION = 2  # bump when the mining semantics change, so old sets are not extended with new rules
AUTO = "auto"      # --margin / --rank-window left to the per-task defaults


class MineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "e5-small"
    langs: list[str] | None = None
    top_k: int = 100                      # candidates retrieved per example (search depth)
    rank_window: tuple[int, int] | str = AUTO
    margin: float | None | str = AUTO     # None: no positive-aware margin
    per_example: int = 5
    near_dup: float | None = 0.8          # Jaccard threshold; None: exact (normalised) equality only
    class_guard: bool = True
    pool_by: str = "task"                 # task: same lang + task; lang: same lang, any task
    pool: str = "positives"               # positives | products
    cross_lingual: bool = False           # pool across the selected languages
    batch_size: int = 64                  # encoder batch
    mine_batch: int = 2048                # examples per batch (one search of the pool, one transaction)
    cand_chunk: int = 16384               # candidate embeddings per streamed chunk
    duckdb_memory: str | None = "512MB"   # DuckDB memory_limit while reading pools and mining (spills past it)
    device: str = "cpu"
    progress: bool = True
    block: int = 1 << 25                  # max scores alive at once in the search (128 MB)
    ann_min: int = 0                      # pools of at least this many texts: IVF index (mine_ann); 0: all exact
    nprobe: int = 32                      # IVF lists searched a query (of 4 sqrt(n)); nlist searches exactly

    def window(self, task: str) -> tuple[int, int]:
        return task_rule(task).rank_window if self.rank_window == AUTO else tuple(self.rank_window)

    def margin_for(self, task: str) -> float | None:
        return task_rule(task).margin if self.margin == AUTO else self.margin

    def validate(self) -> None:
        if self.rank_window != AUTO:
            if isinstance(self.rank_window, str):
                raise CompassError(f"--rank-window {self.rank_window!r}: write it as LO:HI, e.g. 10:100, or auto")
            lo, hi = self.rank_window
            if not (0 <= lo < hi):
                raise CompassError(f"--rank-window {lo}:{hi}: need 0 <= lo < hi, e.g. 10:100")
        for lo, hi in {self.window(t) for t in [*TASK_RULES, "*"]}:
            if lo >= self.top_k:
                raise CompassError(f"--rank-window {lo}:{hi} starts at or past --top-k {self.top_k}: nothing would "
                                   f"be eligible; raise --top-k above {lo} or lower the window start")
        if isinstance(self.margin, str) and self.margin != AUTO:
            raise CompassError(f"--margin {self.margin!r}: use a value in (0, 1], auto, or 0 to disable it")
        if self.margin not in (AUTO, None) and not (0 < self.margin <= 1):
            raise CompassError(f"--margin {self.margin}: use a value in (0, 1], e.g. 0.95, or 0 to disable it")
        if self.per_example < 1 or self.top_k < 1:
            raise CompassError("--per-example and --top-k must be at least 1")
        if self.near_dup is not None and not (0 < self.near_dup <= 1):
            raise CompassError(f"--near-dup {self.near_dup}: use a Jaccard threshold in (0, 1], or 0 to disable")
        if self.ann_min < 0 or self.nprobe < 1:
            raise CompassError(f"--ann-min {self.ann_min} / --nprobe {self.nprobe}: need --ann-min >= 0 (0: exact "
                               "search for every pool) and --nprobe >= 1, e.g. --ann-min 50000 --nprobe 32")
        if self.pool_by not in ("task", "lang"):
            raise CompassError(f"--pool-by {self.pool_by!r}: use task or lang")
        if self.pool not in ("positives", "products"):
            raise CompassError(f"--pool {self.pool!r}: use positives (kept positives) or products (every product "
                               "text of the language and market, plus the positives)")

    def guard_config(self, task: str) -> GuardConfig:
        lo, hi = self.window(task)
        return GuardConfig(depth=self.top_k, lo=lo, hi=hi, margin=self.margin_for(task), per_example=self.per_example)

    def set_params(self, model_fp: str, prompts: dict | None = None) -> dict:
        """What decides the negatives (not langs, batch sizes or device): the negative set's identity."""
        p = {"miner": MINER_VERSION, "model_fp": model_fp, "top_k": self.top_k,
             "rank_window": self.rank_window if self.rank_window == AUTO else list(self.rank_window),
             "margin": self.margin, "per_example": self.per_example, "near_dup": self.near_dup,
             "class_guard": self.class_guard, "pool_by": self.pool_by, "pool": self.pool,
             "cross_lingual": self.cross_lingual, "normalize_embeddings": True, "prompts": prompts or {}}
        if AUTO in (self.margin, self.rank_window) or self.pool == "products":
            p["task_rules"] = rules_params()
        if self.ann_min:   # absent when exact: sets mined exactly before the IVF index keep their id
            p["search"] = {"ann_min": self.ann_min, "nprobe": self.nprobe, "index": "ivf-flat, 4 sqrt(n) lists"}
        return p
