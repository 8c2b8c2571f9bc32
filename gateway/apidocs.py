"""``docs/api.md`` from the OpenAPI document: routes, bodies and errors, plus the Kafka topics' payloads.

The page keeps hand-written prose (authentication, the WebSocket, callbacks) between generated blocks
marked ``<!-- generated:NAME -->`` ... ``<!-- /generated:NAME -->``; this module rewrites only those
blocks, from :func:`gateway.openapi.openapi_document` and :data:`schemas.events.PAYLOADS`, so the
reference cannot drift from the code (a test fails when the checked-in file is stale).

    python -m gateway.apidocs           # rewrite docs/api.md
    python -m gateway.apidocs --check   # exit 1 if docs/api.md is not what the code says
"""

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic.json_schema import models_json_schema

from gateway.openapi import openapi_document
from schemas.events import PAYLOADS

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
_BLOCK = re.compile(r"(<!-- generated:(?P<name>[a-z]+) -->\n).*?(<!-- /generated:(?P=name) -->)", re.S)
_METHODS = ("get", "post", "put", "patch", "delete")
_REF = "#/components/schemas/"


def _cell(text: Any) -> str:
    """One Markdown table cell: a single line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _anchor(name: str) -> str:
    return name.lower()


def _type(schema: dict[str, Any]) -> str:
    """A JSON Schema as a short readable type: ``string``, ``array of [Scene](#scene)``, ``"a", "b"``."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix(_REF).removeprefix("#/$defs/")
        return f"[{name}](#{_anchor(name)})"
    if "anyOf" in schema or "oneOf" in schema:
        return " or ".join(_type(s) for s in schema.get("anyOf", schema.get("oneOf", [])))
    if "const" in schema:
        return f'`"{schema["const"]}"`'
    if "enum" in schema:
        return ", ".join(f'`"{v}"`' if isinstance(v, str) else f"`{v}`" for v in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if kind == "string" and "format" in schema:
        return f"string ({schema['format']})"
    return str(kind)


_LIMITS: tuple[tuple[str, Callable[[Any], str]], ...] = (
    ("pattern", lambda v: f"pattern `{v}`"),
    ("minLength", lambda v: f"length ≥ {v}"),
    ("maxLength", lambda v: f"length ≤ {v}"),
    ("minimum", lambda v: f"≥ {v}"),
    ("exclusiveMinimum", lambda v: f"> {v}"),
    ("maximum", lambda v: f"≤ {v}"),
    ("minItems", lambda v: f"≥ {v} items"),
    ("maxItems", lambda v: f"≤ {v} items"),
)


def _rules(schema: dict[str, Any]) -> str:
    """Constraints (the items' too), default and description of a property, nullable variants included."""
    parts: list[str] = []
    for variant in [schema, *schema.get("anyOf", [])]:
        for key, say in _LIMITS:
            if key in variant:
                parts.append(say(variant[key]))
        items = variant.get("items")
        item_rules = _rules({k: v for k, v in items.items() if k != "default"}) if items else ""
        if item_rules:
            parts.append(f"each: {item_rules}")
    if "default" in schema:
        parts.append(f"default `{json.dumps(schema['default'])}`")
    if schema.get("description"):
        parts.append(" ".join(schema["description"].split()))
    return "; ".join(parts)


def _schema_section(name: str, schema: dict[str, Any]) -> list[str]:
    lines = [f"#### {name}", ""]
    if schema.get("description"):
        lines += [" ".join(schema["description"].split()), ""]
    props: dict[str, Any] = schema.get("properties", {})
    if not props:
        return [*lines, f"{_type(schema)}", ""]
    required = set(schema.get("required", []))
    lines += ["| field | type | required | rules |", "| --- | --- | --- | --- |"]
    for field, spec in props.items():
        mark = "yes" if field in required else ""
        lines.append(f"| `{field}` | {_cell(_type(spec))} | {mark} | {_cell(_rules(spec))} |")
    return [*lines, ""]


def _parameters(params: Iterable[dict[str, Any]]) -> list[str]:
    params = list(params)
    if not params:
        return []
    lines = ["| parameter | in | required | type | meaning |", "| --- | --- | --- | --- | --- |"]
    for p in params:
        schema = p.get("schema", {})
        kind = _type(schema) + (f" `{schema['pattern']}`" if "pattern" in schema else "")
        limits = _rules({k: v for k, v in schema.items() if k != "pattern"})
        meaning = "; ".join(x for x in (p.get("description", ""), limits) if x)
        mark = "yes" if p.get("required") else ""
        lines.append(f"| `{p['name']}` | {p['in']} | {mark} | {_cell(kind)} | {_cell(meaning)} |")
    return [*lines, ""]


def _body(content: dict[str, Any]) -> str:
    return ", ".join(
        f"`{media}` {_type(spec['schema'])}" if "schema" in spec else f"`{media}`"
        for media, spec in content.items()
    )


def routes_block(doc: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for path, item in doc["paths"].items():
        for method in _METHODS:
            op = item.get(method)
            if op is None:
                continue
            lines += [f"### {method.upper()} `{path}`", ""]
            if op.get("summary"):
                lines += [" ".join(op["summary"].split()), ""]
            if op.get("description"):
                lines += [" ".join(op["description"].split()), ""]
            if op.get("security") == [{}]:
                lines += ["No API key needed.", ""]
            lines += _parameters(op.get("parameters", []))
            body = op.get("requestBody")
            if body:
                lines += [f"Body: {_body(body['content'])}", ""]
            lines += ["| status | meaning | body |", "| --- | --- | --- |"]
            for status, response in op["responses"].items():
                content = _body(response["content"]) if response.get("content") else ""
                lines.append(f"| {status} | {_cell(response.get('description', ''))} | {_cell(content)} |")
            lines.append("")
    return lines


def schemas_block(doc: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for name, schema in doc["components"]["schemas"].items():
        lines += _schema_section(name, schema)
    return lines


def topics_block() -> list[str]:
    """Each topic, its payload model (the CloudEvent's ``data``), and the models it refers to."""
    models = list(dict.fromkeys(PAYLOADS.values()))
    _, top = models_json_schema([(m, "serialization") for m in models], ref_template="#/$defs/{model}")
    defs: dict[str, Any] = top.get("$defs", {})
    lines = ["| topic | CloudEvents `type` | `data` |", "| --- | --- | --- |"]
    for topic, model in PAYLOADS.items():
        lines.append(f"| `{topic}` | `reelstream.{topic}` | [{model.__name__}](#{_anchor(model.__name__)}) |")
    lines.append("")
    api_models = set(openapi_document()["components"]["schemas"])
    for name in sorted(defs):
        if name not in api_models:  # the API's models are described above, once
            lines += _schema_section(name, defs[name])
    return lines


def render(current: str) -> str:
    """``current`` with every generated block rewritten from the code."""
    doc = openapi_document()
    blocks: dict[str, Callable[[], list[str]]] = {
        "routes": lambda: routes_block(doc),
        "schemas": lambda: schemas_block(doc),
        "topics": topics_block,
    }

    def fill(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in blocks:
            raise ValueError(f"unknown generated block {name!r} in {DOC}")
        return match.group(1) + "\n".join(["", *blocks[name](), ""]) + match.group(3)

    return _BLOCK.sub(fill, current)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate docs/api.md from the OpenAPI document.")
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/api.md is stale")
    args = parser.parse_args(argv)
    current = DOC.read_text()
    fresh = render(current)
    if args.check:
        if fresh != current:
            print(f"{DOC} is stale: run `python -m gateway.apidocs`", file=sys.stderr)
            return 1
        return 0
    if fresh != current:
        DOC.write_text(fresh)
        print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
