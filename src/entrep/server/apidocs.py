"""An offline API reference page rendered from the app's OpenAPI schema.

FastAPI's built-in /docs loads Swagger UI from a CDN, which is blank on an
air-gapped hospital machine. This page is plain server-rendered HTML (no
script), built from the same schema that /openapi.json serves, so it never
drifts from the code.
"""

from __future__ import annotations

import html
from typing import Any, Mapping

_METHOD_ORDER = ("get", "post", "put", "patch", "delete")


def _type_of(schema: Mapping[str, Any], components: Mapping[str, Any]) -> str:
    if not schema:
        return "any"
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " | ".join(_type_of(s, components) for s in schema["anyOf"])
    t = schema.get("type", "any")
    if t == "array":
        return f"list of {_type_of(schema.get('items', {}), components)}"
    if schema.get("format") == "binary" or "contentMediaType" in schema:
        return "file"
    bounds = []
    if "minimum" in schema:
        bounds.append(f">= {schema['minimum']}")
    if "maximum" in schema:
        bounds.append(f"<= {schema['maximum']}")
    return t + (f" ({', '.join(bounds)})" if bounds else "")


def _body_fields(op: Mapping[str, Any], components: Mapping[str, Any]) -> list[tuple[str, str, bool, str]]:
    content = (op.get("requestBody") or {}).get("content") or {}
    out = []
    for media, spec in content.items():
        schema = spec.get("schema") or {}
        if "$ref" in schema:
            schema = components.get(schema["$ref"].rsplit("/", 1)[-1], {})
        required = set(schema.get("required") or [])
        for name, prop in (schema.get("properties") or {}).items():
            out.append((name, f"{_type_of(prop, components)} ({media})", name in required, prop.get("description", "")))
    return out


def render_api_docs(schema: Mapping[str, Any], *, stylesheet: str = "/static/style.css") -> str:
    """One HTML page listing every path, its parameters, body fields and responses."""
    e = html.escape
    comps = (schema.get("components") or {}).get("schemas") or {}
    info = schema.get("info") or {}
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(info.get('title', 'API'))} - API reference</title>",
        f'<link rel="stylesheet" href="{e(stylesheet)}"></head><body class="apidocs"><main>',
        f"<h1>{e(info.get('title', 'API'))} <small>v{e(str(info.get('version', '')))}</small></h1>",
        f"<p>{e(info.get('description', ''))}</p>",
        '<p>Machine-readable schema: <a href="/openapi.json">/openapi.json</a>. Back to the <a href="/">search page</a>.</p>',
    ]
    for path, ops in (schema.get("paths") or {}).items():
        for method in sorted(ops, key=lambda m: _METHOD_ORDER.index(m) if m in _METHOD_ORDER else 99):
            op = ops[method]
            parts.append(f'<section class="endpoint"><h2><span class="method">{e(method.upper())}</span> '
                         f"<code>{e(path)}</code></h2>")
            if op.get("summary"):
                parts.append(f"<p><strong>{e(op['summary'])}</strong></p>")
            if op.get("description"):
                parts.append(f"<p>{e(op['description'])}</p>")
            rows = [(p["name"], f"{_type_of(p.get('schema', {}), comps)} ({p.get('in')})", bool(p.get("required")),
                     p.get("description", "") or (p.get("schema") or {}).get("description", ""))
                    for p in op.get("parameters") or []]
            rows += _body_fields(op, comps)
            if rows:
                parts.append("<table><thead><tr><th>parameter</th><th>type</th><th>required</th><th>meaning</th>"
                             "</tr></thead><tbody>")
                for name, typ, req, desc in rows:
                    parts.append(f"<tr><td><code>{e(name)}</code></td><td>{e(typ)}</td><td>{'yes' if req else 'no'}"
                                 f"</td><td>{e(desc)}</td></tr>")
                parts.append("</tbody></table>")
            responses = op.get("responses") or {}
            if responses:
                items = "".join(f"<li><code>{e(code)}</code> {e(r.get('description', ''))}</li>"
                                for code, r in responses.items())
                parts.append(f"<p>Responses:</p><ul>{items}</ul>")
            parts.append("</section>")
    parts.append("</main></body></html>")
    return "\n".join(parts)
