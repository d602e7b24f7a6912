"""Read a sweep YAML into a validated `Sweep`, or fail with one line naming the YAML path and fix.

YAML numbers: PyYAML follows YAML 1.1, where `1e18` (no dot) is a string. Sweeps are full of such
budgets, so this loader reads them as numbers (the YAML 1.2 rule), and says so in the schema docs.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from scaling.errors import UserError, did_you_mean
from scaling.recipes import resolve_recipe
from scaling.schema import Sweep

# YAML 1.2 floats that YAML 1.1 misses: exponent without a dot (1e18, -2E+3, 5e-4).
_FLOAT_12 = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class _SweepLoader(yaml.SafeLoader):
    """SafeLoader that also reads exponent-only floats (1e18) as numbers."""


_SweepLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789"))


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    """PyYAML keeps the last of two equal keys without a word; a sweep with `budgets:` twice
    would silently run the second list. Refuse it, naming both lines."""
    first_line: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in first_line
        except TypeError:  # an unhashable key: construct_mapping says so
            break
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {first_line[key] + 1}); keep one "
                "of them", key_node.start_mark)
        first_line[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_SweepLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def format_location(loc: tuple) -> str:
    """('budgets', 2) -> 'sweep.budgets[2]'; pydantic's union/tag markers are dropped."""
    path = "sweep"
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("window", "around_optimum") or "[" in str(part) or "function-" in str(part):
            continue  # discriminated-union tag or validator wrapper, not a YAML key
        else:
            path += f".{part}"
    return path


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _models_in(annotation) -> list[type[BaseModel]]:
    """The config models inside a field's annotation (X, X | None, tuple[X, ...], X | Y)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models_in(arg)]


def known_keys(loc: tuple) -> list[str]:
    """The keys the schema accepts in the mapping at `loc` (a pydantic error location); [] where
    it cannot tell (a family's options)."""
    models: list[type[BaseModel]] = [Sweep]
    for part in loc:
        if isinstance(part, int):
            continue  # a list item: the field's annotation already names the item's model
        field = next((m.model_fields[part] for m in models if part in m.model_fields), None)
        if field is not None:
            models = _models_in(field.annotation)
        else:  # a discriminated union's tag (selection: window | around_optimum)
            models = [m for m in models
                      if "mode" in m.model_fields and m.model_fields["mode"].default == part]
    return list(models[0].model_fields) if len(models) == 1 else []


def format_error(err: dict) -> str:
    """One pydantic error -> 'sweep.path: problem; fix'."""
    where = format_location(err["loc"])
    kind, ctx, value = err["type"], err.get("ctx", {}), err.get("input")
    if kind == "extra_forbidden":
        key = err["loc"][-1] if err["loc"] else "?"
        fix = did_you_mean(key, known_keys(err["loc"][:-1]), "remove it or fix its spelling")
        return f"{where}: unknown key {key!r}; {fix} (see README: sweep format)"
    if kind == "missing" and err["loc"] and isinstance(err["loc"][-1], int):
        return f"{format_location(err['loc'][:-1])}: too few items; give all {err['loc'][-1] + 1} or more"
    if kind == "missing":
        return f"{where}: required key is missing; add it (see README: sweep format)"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
              "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()), "?")
        return f"{where}: must be {op} {bound}, got {_describe(value)}; change the value"
    if kind in ("float_type", "int_type", "float_parsing", "int_parsing", "int_from_float"):
        want = "an integer" if kind.startswith("int") else "a number"
        return f"{where}: must be {want}, got {_describe(value)}; write a plain number like 1.0e+18 (unquoted)"
    if kind in ("string_type", "bool_type", "list_type", "dict_type", "tuple_type", "model_type",
                "model_attributes_type"):
        want = kind.split("_")[0].replace("model", "mapping").replace("dict", "mapping")
        return f"{where}: must be a {want}, got {_describe(value)}; fix its type"
    if kind == "literal_error":
        return f"{where}: got {_describe(value)}; choose one of {ctx.get('expected', '?')}"
    if kind == "union_tag_invalid":
        return f"{where}: unknown mode {_describe(ctx.get('tag'))}; choose one of {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return f"{where}: missing `mode`; add mode: window or mode: around_optimum"
    if kind in ("too_short", "too_long"):
        return f"{where}: {err['msg'].lower()}; list at least one entry"
    if kind == "string_pattern_mismatch":
        return f"{where}: {_describe(value)} is not a valid name; use letters, digits, '_', '-', '.'"
    message = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return f"{where}: {message}"


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise UserError(f"{path}: no such sweep file; check the path (shipped sweeps are in sweeps/)")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a sweep file; name a .yaml file")
    try:
        raw = yaml.load(path.read_text(), Loader=_SweepLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}: YAML syntax error at {where}: {problem}; fix the YAML there") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: the sweep must be a YAML mapping with keys name, families, budgets, "
                        f"ladder, selection, data; got {type(raw).__name__}")
    return raw


def parse_sweep(raw: dict[str, Any], source: str = "sweep") -> Sweep:
    """Validate a loaded YAML mapping; UserError with one line on any problem."""
    raw = dict(raw)
    recipe = raw.get("recipe")
    if isinstance(recipe, dict):
        try:
            raw["recipe"] = resolve_recipe(recipe)
        except KeyError as exc:
            raise UserError(f"{source}: sweep.recipe.name: {exc.args[0]}") from None
    try:
        return Sweep.model_validate(raw)
    except ValidationError as exc:
        # A misspelt key first: it also explains the "required key is missing" of its right name.
        errors = sorted(exc.errors(), key=lambda err: err["type"] != "extra_forbidden")
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise UserError(f"{source}: {format_error(errors[0])}{more}") from None


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file. Nothing is started or written."""
    path = Path(path)
    return parse_sweep(read_yaml(path), source=str(path))


def load_plan(path: str | Path):
    """Read, validate and expand a sweep file -> (Sweep, GridPlan); errors name the file."""
    from scaling.grid import expand

    sweep = load_sweep(path)
    try:
        return sweep, expand(sweep)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
