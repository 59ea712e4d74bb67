"""docs/config.md, generated from the configuration schema (``kdcore/schemas/config.schema.yaml``).

    python -m kdcore.configdoc > docs/config.md

One table row per key: its type, allowed range, default and description, all read from the schema, so
the reference cannot drift from what validation enforces (a test compares docs/config.md with
:func:`render`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from typing import Any

import yaml

from kdcore.schema import RUN_CONFIG_REF, load_schema, lookup, properties_of, resolved

NO_DEFAULT = object()
HEADER = "| key | type | range | default | meaning |\n|---|---|---|---|---|"


def _code(value: Any) -> str:
    """A value as inline YAML in backticks (`null`, `[0, 1]`, `{a: 1}`)."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000).strip()
    return f"`{text.removesuffix('...').strip()}`"


def _text(schema: Mapping[str, Any]) -> str:
    return " ".join(str(schema.get("description", "")).split()).replace("|", "\\|")


def type_text(schema: Mapping[str, Any]) -> str:
    types = schema.get("type")
    if types is None:
        return "one of"
    types = [types] if isinstance(types, str) else list(types)
    if "array" in types:
        items = resolved(schema.get("items", {}))
        item_keys = list(properties_of(items))
        inner = "{" + ", ".join(item_keys) + "}" if item_keys else " or ".join(_as_list(items.get("type", "value")))
        types = [f"list of {inner}" if t == "array" else t for t in types]
    return " or ".join("mapping" if t == "object" else t for t in types)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def range_text(schema: Mapping[str, Any]) -> str:
    """The allowed values of a key: enum, interval, multiple, pattern, list length."""
    parts = []
    if "enum" in schema:
        parts.append(", ".join(_code(v) for v in schema["enum"]))
    low = ("[", schema["minimum"]) if "minimum" in schema else ("(", schema.get("exclusiveMinimum"))
    high = (schema["maximum"], "]") if "maximum" in schema else (schema.get("exclusiveMaximum"), ")")
    if low[1] is not None or high[0] is not None:
        lo = "-inf" if low[1] is None else f"{low[1]:g}"
        hi = "inf" if high[0] is None else f"{high[0]:g}"
        parts.append(f"{low[0] if low[1] is not None else '('}{lo}, {hi}{high[1] if high[0] is not None else ')'}")
    if "multipleOf" in schema:
        parts.append(f"multiple of {schema['multipleOf']:g}")
    if "pattern" in schema:
        parts.append(f"`{schema['pattern']}`".replace("|", "\\|"))
    if "minItems" in schema:
        parts.append(f">= {schema['minItems']} items")
    if schema.get("uniqueItems"):
        parts.append("no repeats")
    items = resolved(schema.get("items", {}))
    if "enum" in items:
        parts.append("items: " + ", ".join(_code(v) for v in items["enum"]))
    return "; ".join(parts)


def _default(schema: Mapping[str, Any], inherited: Any) -> Any:
    """The key's own default (following ``$ref``), else its value in its parent's default."""
    while True:
        if "default" in schema:
            return schema["default"]
        if "$ref" not in schema:
            return inherited
        schema = lookup(schema["$ref"])


def rows(key: str, schema: Mapping[str, Any], inherited: Any = NO_DEFAULT, required: bool = False) -> Iterator[str]:
    """Table rows of ``key`` and, for a mapping, of every key below it."""
    full = resolved(schema)
    default = _default(schema, inherited)
    shown = _code(default) if default is not NO_DEFAULT else "(required)" if required else "(none)"
    yield f"| `{key}` | {type_text(full)} | {range_text(full)} | {shown} | {_text(full)} |"
    yield from _child_rows(key, schema, default)


def _child_rows(key: str, schema: Mapping[str, Any], default: Any) -> Iterator[str]:
    full = resolved(schema)
    children = properties_of(schema)
    needed = set(full.get("required", []))
    for name, child in children.items():
        parent_default = default.get(name, NO_DEFAULT) if isinstance(default, Mapping) else NO_DEFAULT
        yield from rows(f"{key}.{name}" if key else name, child, parent_default, name in needed)
    if isinstance(full.get("additionalProperties"), Mapping) and not children:
        value = resolved(full["additionalProperties"])
        needed = set(value.get("required", []))
        for name, child in properties_of(value).items():
            yield from rows(f"{key}.<name>.{name}", child, required=name in needed)


def render() -> str:
    """The whole of docs/config.md."""
    schema = load_schema()
    out = [
        "# Configuration reference",
        "",
        "<!-- generated from src/kdcore/schemas/config.schema.yaml by `python -m kdcore.configdoc > docs/config.md`;"
        " edit the schema, not this file -->",
        "",
        _text(schema),
        "",
        "A key marked (required) has no default; a default shown on a mapping applies when the mapping is",
        "left out, the defaults of its keys when they are.",
        "",
    ]
    for name, sub in schema["properties"].items():
        out += [f"## `{name}`", "", HEADER, *rows(name, sub), ""]
    for example in schema.get("x-examples", []):
        text = yaml.safe_dump(example["config"], default_flow_style=None, sort_keys=False, width=120)
        out += [f"## Example: {example['title']}", "", "```yaml", text.rstrip(), "```", ""]
    run = lookup(RUN_CONFIG_REF)
    out += ["## Run config (one training run)", "", _text(run), "", HEADER, *_child_rows("", run, NO_DEFAULT), ""]
    return "\n".join(out).rstrip() + "\n"


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
