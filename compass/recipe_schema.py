"""What a recipe step may say: a pydantic model per step kind, derived from its command's flags.

Deriving the model from the command (compass.recipe_steps.commands) means a recipe key and a CLI flag cannot
drift: `--per-example` is `per_example:`, with the flag's type and default. Unknown keys are refused by name.
"""

from __future__ import annotations

import functools
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from compass.errors import CompassError


class StepOptions(BaseModel):
    """Base of every step model: no unknown keys; a list given for a comma-separated flag is joined."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    @model_validator(mode="before")
    @classmethod
    def _join_lists(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        by_key = {f.alias or n: f for n, f in cls.model_fields.items()}
        for k, v in data.items():
            f = by_key.get(k)
            if f is not None and isinstance(v, list) and _is_str(f.annotation):
                out[k] = ",".join(str(x) for x in v)   # `stages: [langid, quality]` for --stages langid,quality
        return out


def _is_str(annotation: Any) -> bool:
    """str or Optional[str] (not a list type: those take lists as they are)."""
    if annotation is str:
        return True
    args = typing.get_args(annotation)
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and str in args and \
        not any(typing.get_origin(a) is list for a in args)


@functools.cache
def _model(kind: str) -> type[StepOptions]:
    from compass.recipe_steps import command

    cmd = command(kind)
    fields = {}
    for o in cmd.options.values():
        # a key such as `json` would shadow a BaseModel method: the field gets another name, the key stays
        name = f"{o.key}_" if hasattr(BaseModel, o.key) else o.key
        fields[name] = (o.annotation, Field(... if _required(o.default) else o.default, alias=o.key))
    model = create_model(f"{kind.replace('-', '_')}_step", __base__=StepOptions, **fields)
    model.__doc__ = cmd.help
    return model


def _required(default: Any) -> bool:
    import inspect

    return default is inspect.Parameter.empty


def step_model(kind: str, where: str = "") -> type[StepOptions]:
    """The options model of step `kind` (CompassError naming the nearest kind when unknown)."""
    try:
        return _model(kind)
    except CompassError as e:
        raise CompassError(f"{where}: {e}" if where else str(e)) from None


# Folders and files a step leaves behind: a step whose output is gone runs again even if its record says done.
# (option, file inside it; "" = the path itself)
OUTPUT_MARKERS: dict[str, list[tuple[str, str]]] = {
    "train": [("out", "compass_train.json")],
    "eval": [("json", "")],
    "merge": [("out", "modules.json")],
    "export-fp8": [("out", "")],
    "publish": [("to_dir", ".compass-manifest.json")],
    "export": [("out", ".compass-manifest.json")],
    "report": [("out", "")],
}


@dataclass
class Step:
    id: str
    kind: str
    config: StepOptions

    @property
    def options(self) -> dict[str, Any]:
        """The keys the recipe gave, in the command's order (the command's own defaults apply to the rest, as on
        the command line)."""
        given = self.config.model_fields_set
        return {f.alias or n: getattr(self.config, n) for n, f in type(self.config).model_fields.items()
                if n in given}

    def params(self) -> dict[str, Any]:
        """Every option, defaults included: what the step's skip key hashes."""
        return self.config.model_dump(mode="json", by_alias=True)

    def outputs(self) -> list[Path]:
        paths = []
        values = self.config.model_dump(by_alias=True)
        for key, inside in OUTPUT_MARKERS.get(self.kind, []):
            value = values.get(key)
            if value:
                paths.append(Path(value) / inside if inside else Path(value))
        return paths

    def argv(self) -> list[str]:
        """The equivalent command line (shown while the recipe runs)."""
        from compass.recipe_steps import command

        cmd = command(self.kind)
        args = ["compass", self.kind]
        for key, value in self.options.items():
            opt = cmd.options[key]
            if opt.flag is None:
                args += [str(v) for v in (value if isinstance(value, list) else [value])]
            elif isinstance(value, bool):
                args.append(opt.flag if value else "--no-" + opt.flag[2:])
            elif isinstance(value, list):
                for v in value:
                    args += [opt.flag, str(v)]
            elif value is not None:
                args += [opt.flag, str(value)]
        return args


def yaml_lines(text: str) -> dict[tuple, int]:
    """{key path: 1-based line} for every mapping key and list item of a YAML document (for error messages)."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    lines: dict[tuple, int] = {}

    def walk(node: Any, path: tuple) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = k.value
                lines[path + (key,)] = k.start_mark.line + 1
                walk(v, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, path + (i,))

    if root is not None:
        walk(root, ())
    return lines
