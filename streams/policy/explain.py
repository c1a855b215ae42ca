"""Human-facing views of the policies: per-recipient tables, the field × recipient matrix.

Pure functions returning strings, used by ``screening-streams policy explain|matrix``.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from streams.contracts.schemas import Schema, iter_fields
from streams.policy.model import Policy


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], max_width: int = 70) -> str:
    """Render a plain-text table with column widths fitted to the content (cells clipped)."""
    cells = [[str(c) if len(str(c)) <= max_width else str(c)[: max_width - 1] + "…" for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(out)


def explain_policy(policy: Policy) -> str:
    """What one recipient receives: filters, then each field with operator, sources, purpose."""
    head = [
        f"{policy.title} ({policy.recipient}), policy version {policy.version}",
        f"topic: {policy.topic}" + ("  (one per region, from commune_code)" if policy.route else ""),
        "takes: " + "; ".join(c.describe() for c in policy.filters),
        "",
    ]
    rows = []
    for rule in policy.fields:
        op = rule.op + (f" {dict(rule.args)}" if rule.args else "")
        cond = f"only if {rule.when.describe()}" if rule.when else ""
        name = "(not shared)" if rule.op == "drop" else rule.name
        rows.append([name, ", ".join(rule.sources), op, cond, rule.purpose])
    tail = ["", "Every other input field is dropped (default deny)."]
    return (
        "\n".join(head)
        + table(["field", "from", "operator", "condition", "purpose"], rows, 90)
        + "\n"
        + "\n".join(tail)
    )


def matrix_cells(policies: Sequence[Policy], input_schema: Schema) -> tuple[list[str], list[list[str]]]:
    """Rows of (input field, class, one cell per recipient) saying what each recipient gets."""
    headers = ["input field", "class", *[p.recipient for p in policies]]
    rows = []
    for info in iter_fields(input_schema):
        row = [info.name, info.data_class or "?"]
        for policy in policies:
            uses = [r for r in policy.emitted if info.name in r.sources]
            if not uses:
                row.append("·")
                continue
            parts = []
            for rule in uses:
                text = (
                    rule.op if rule.op in ("keep", "encrypt") and rule.name == info.name else f"{rule.op}→{rule.name}"
                )
                if rule.when:
                    text += " (if " + rule.when.describe().replace(" not in ", "∉").replace(" in ", "∈") + ")"
                parts.append(text)
            row.append("; ".join(parts))
        rows.append(row)
    return headers, rows


def matrix_text(policies: Sequence[Policy], input_schema: Schema) -> str:
    """The field × recipient matrix as a terminal table ('·' = never received)."""
    headers, rows = matrix_cells(policies, input_schema)
    return table(headers, rows, 60) + "\n\n· = never received (default deny)"


def matrix_html(policies: Sequence[Policy], input_schema: Schema) -> str:
    """The field × recipient matrix as a standalone HTML page."""
    headers, rows = matrix_cells(policies, input_schema)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        tds = []
        for i, cell in enumerate(row):
            cls = (
                "deny" if cell == "·" else ("kept" if cell in ("keep", "encrypt") else ("xform" if i >= 2 else "meta"))
            )
            tds.append(f'<td class="{cls}">{html.escape(cell)}</td>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    style = (
        "body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #999;"
        "padding:3px 6px;font-size:13px}.deny{background:#eee;color:#999;text-align:center}"
        ".kept{background:#f8c4c4}.xform{background:#fdf0b4}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>screening-streams policy matrix</title>"
        f"<style>{style}</style></head><body><h1>What each recipient receives</h1>"
        f"<p>Red: value as is. Yellow: pseudonymised, generalised or conditional. Grey: never received.</p>"
        f"<table><tr>{head}</tr>{''.join(body)}</table></body></html>\n"
    )
