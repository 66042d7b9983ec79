"""`GET /docs`: the OpenAPI document rendered as one self-contained HTML page.

No scripts, fonts or styles from elsewhere: it works offline and behind any proxy.
"""

from __future__ import annotations

from html import escape
from typing import Any

_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;margin:0 auto;max-width:72rem;padding:1rem 2rem}
h1{margin-bottom:.2rem}h2{border-bottom:1px solid #ccd;padding-top:1rem}
code,.path{font-family:ui-monospace,monospace}
.op{border:1px solid #dde;border-radius:6px;margin:.8rem 0;padding:.5rem .9rem}
.m{display:inline-block;min-width:4.2rem;font-weight:700;text-transform:uppercase}
.get{color:#1a7f37}.post{color:#0969da}.patch{color:#9a6700}.delete{color:#cf222e}.put{color:#8250df}
table{border-collapse:collapse;margin:.4rem 0;width:100%}
td,th{border:1px solid #e3e3ea;padding:.2rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}.muted{color:#656d76}nav a{margin-right:.8rem}
"""


def _anchor(name: str) -> str:
    return "schema-" + name.replace(".", "-")


def type_label(schema: dict[str, Any]) -> str:
    """A short HTML label for a schema: a link for a $ref, else its type."""
    if "$ref" in schema:
        name = str(schema["$ref"]).rsplit("/", 1)[-1]
        return f'<a href="#{_anchor(name)}">{escape(name)}</a>'
    kind = schema.get("type")
    if kind == "array":
        return "array of " + type_label(schema.get("items", {}))
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return "map of string to " + type_label(schema["additionalProperties"])
    if "enum" in schema:
        return "enum: " + ", ".join(f"<code>{escape(str(v))}</code>" for v in schema["enum"])
    label = " | ".join(kind) if isinstance(kind, list) else str(kind or "any")
    if "format" in schema:
        label += f" ({schema['format']})"
    return escape(label)


def _text(value: Any) -> str:
    return escape(str(value or "")).replace("\n", "<br>")


def render_docs(spec: dict[str, Any]) -> str:
    info = spec.get("info", {})
    out = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{escape(info.get('title', 'API'))}</title>",
        '<meta name=viewport content="width=device-width,initial-scale=1">',
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{escape(info.get('title', 'API'))} "
        f"<small class=muted>{escape(info.get('version', ''))}</small></h1>",
        f"<p>{_text(info.get('description'))} The machine-readable document is "
        '<a href="/openapi.json">/openapi.json</a>.</p>',
    ]
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, item in spec.get("paths", {}).items():
        for method, op in item.items():
            for tag in op.get("tags", ["other"]):
                by_tag.setdefault(tag, []).append((path, method, op))
    out.append("<nav>" + "".join(f'<a href="#tag-{escape(t)}">{escape(t)}</a>' for t in by_tag))
    out.append('<a href="#schemas">Schemas</a></nav>')
    descriptions = {t["name"]: t.get("description", "") for t in spec.get("tags", [])}
    for tag, ops in by_tag.items():
        out.append(f'<h2 id="tag-{escape(tag)}">{escape(tag)}</h2>')
        if descriptions.get(tag):
            out.append(f"<p>{_text(descriptions[tag])}</p>")
        for path, method, op in ops:
            out.append(_operation(path, method, op))
    out.append('<h2 id="schemas">Schemas</h2>')
    for name, schema in spec.get("components", {}).get("schemas", {}).items():
        out.append(_schema(name, schema))
    out.append("</body></html>")
    return "\n".join(out)


def _operation(path: str, method: str, op: dict[str, Any]) -> str:
    parts = [
        f'<div class=op id="op-{escape(op.get("operationId", ""))}">',
        f'<div><span class="m {escape(method)}">{escape(method)}</span>'
        f"<span class=path>{escape(path)}</span></div>",
        f"<p>{_text(op.get('description'))}</p>",
    ]
    params = op.get("parameters", [])
    if params:
        parts.append(
            "<table><tr><th>Parameter</th><th>In</th><th>Type</th><th>Description</th></tr>"
        )
        for p in params:
            required = " <b>required</b>" if p.get("required") else ""
            parts.append(
                f"<tr><td><code>{escape(p['name'])}</code>{required}</td>"
                f"<td>{escape(p['in'])}</td><td>{type_label(p.get('schema', {}))}</td>"
                f"<td>{_text(p.get('description'))}</td></tr>"
            )
        parts.append("</table>")
    body = op.get("requestBody", {}).get("content", {}).get("application/json")
    if body:
        parts.append(f"<div>Body: {type_label(body.get('schema', {}))}</div>")
    ok = op.get("responses", {}).get("200", {})
    if "x-byok-stream-message" in op:
        parts.append(
            f"<div>Streams: {type_label(op['x-byok-stream-message'])} (SSE or NDJSON)</div>"
        )
    elif "application/json" in ok.get("content", {}):
        parts.append(
            f"<div>Returns: {type_label(ok['content']['application/json']['schema'])}</div>"
        )
    parts.append("</div>")
    return "".join(parts)


def _schema(name: str, schema: dict[str, Any]) -> str:
    parts = [f'<h3 id="{_anchor(name)}"><code>{escape(name)}</code></h3>']
    if schema.get("description"):
        parts.append(f"<p>{_text(schema['description'])}</p>")
    properties = schema.get("properties")
    if properties:
        parts.append("<table><tr><th>Field</th><th>Type</th><th>Description</th></tr>")
        for prop, sub in properties.items():
            parts.append(
                f"<tr><td><code>{escape(prop)}</code></td><td>{type_label(sub)}</td>"
                f"<td>{_text(sub.get('description'))}</td></tr>"
            )
        parts.append("</table>")
    elif "enum" in schema or schema.get("type") != "object":
        parts.append(f"<p>{type_label(schema)}</p>")
    return "".join(parts)
