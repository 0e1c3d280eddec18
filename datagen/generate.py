"""LLM generation from Python, with lineage: `generate(cat, GenerateConfig(...), langs)` -> RunSummary.

    from compass.catalog.db import Catalog
    from compass.datagen.generate import GenerateConfig, generate
    with Catalog("compass.duckdb") as cat:
        s = generate(cat, GenerateConfig(route="grounded", model="Qwen/Qwen3-8B", n=100,
                                         options={"base_url": "http://127.0.0.1:8000/v1"}), langs=["th"])

The config groups what `compass generate` takes: what to ask (route, tasks, personas, n, seed, sampling, compact,
templates), which backend answers (`backend` + its own `options`, validated by the backend's Options model:
see compass.datagen.backends), and the context check (`max_model_len`). The CLI builds the same config.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from compass.datagen.backends import Sampling
from compass.errors import CompassError


class GenerateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    route: Literal["grounded", "translate"] = "grounded"
    model: str = Field(description="Model name (openai) or local folder / Hub id (vllm).")
    tasks: Optional[list[str]] = Field(None, description="Template tasks (grounded) or the source examples' "
                                                         "tasks (translate); default: all.")
    personas: Optional[list[str]] = Field(None, description="grounded: personas (default: all).")
    n: Optional[int] = Field(None, description="Requests spread over the grid (default grounded: one per "
                                               "product; translate: every source x target).")
    seed: int = Field(0, description="Seed for every random choice.")
    sampling: Sampling = Sampling()
    compact: bool = Field(False, description="Shorter prompts: no example turns, no description or price "
                                             "(small-context models).")
    source_langs: list[str] = Field(["en"], description="translate: languages of the examples to translate.")
    templates: Optional[str] = Field(None, description="A templates folder instead of the bundled one.")
    backend: str = Field("openai", description="vllm (offline engine) | openai (any OpenAI-compatible server).")
    options: dict[str, Any] = Field({}, description="The backend's options (validated by its Options model).")
    max_model_len: Optional[int] = Field(None, description="openai: the model's context in tokens; a prompt "
                                         "that fills it (no room for an answer) is stored as reject too_long, "
                                         "unsent (default: from the server's /v1/models; 0: do not check).")
    write_every: int = Field(32, description="Results per transaction (volatile: how often, not what).")
    write_seconds: float = Field(2.0, description="... or a transaction at least this often, in seconds.")

    @field_validator("n")
    @classmethod
    def _n(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise CompassError("--n must be at least 1")
        return v

    @model_validator(mode="after")
    def _backend_options(self) -> GenerateConfig:
        from compass.datagen.backends import backend_options

        if not self.model:
            raise CompassError(f"--route {self.route} needs --model (the model name the server knows, or a local "
                               "folder for --backend vllm)")
        # Validated by the backend's own model (unknown keys refused), stored with its defaults spelt out.
        self.options = backend_options(self.backend, self.options).model_dump(mode="json")
        return self


def plan_requests(cat, config: GenerateConfig, langs: list[str] | None = None) -> list:
    """The planned requests of `config` (deterministic ids); reads the catalog, writes nothing."""
    from compass.datagen.plan import plan_grounded, plan_translate
    from compass.prompts.library import bundled_library, load_library

    lib = load_library(config.templates) if config.templates else bundled_library()
    kw = dict(model=config.model, tasks=config.tasks, n=config.n, seed=config.seed, sampling=config.sampling,
              compact=config.compact)
    if config.route == "grounded":
        return plan_grounded(cat, lib, langs=langs, personas=config.personas, **kw)
    return plan_translate(cat, lib, source_langs=config.source_langs or ["en"], langs=langs, **kw)


def generate(cat, config: GenerateConfig | dict, langs: list[str] | None = None, *, progress: bool = True):
    """Send the unanswered requests of `config`'s plan, under a new `generate` run record; returns the
    RunSummary (its `info` holds requested / already_answered / sent / ok / reject / failed / too_long /
    new_examples)."""
    from compass.datagen.llm_run import LLMGenerate
    from compass.runner import execute, run_config

    stage = LLMGenerate(config)
    with cat.run(stage.name, run_config(stage, langs)) as rec:
        # Through the runner: `compass run RECIPE --executor ray` (use_executor) sends the requests from Ray workers.
        summary = execute(cat, stage, rec, langs=langs, progress=progress)
        rec.summary.update(summary.as_dict())
    return summary
