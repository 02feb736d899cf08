"""The nightly report: one JSON document and the same as a small HTML page, in the run's folder.

``<repo>/<model>/nightly/<day>/report.json`` and ``report.html``; the
exported version's manifest names the page (``training.lineage.report``,
relative to the model's folder), so the rollout page can link it.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"


def write_report(folder: Path, report: dict[str, Any]) -> Path:
    """Write report.json and report.html into ``folder`` (each renamed into place); returns the HTML's path."""
    folder.mkdir(parents=True, exist_ok=True)
    _replace(folder / REPORT_JSON, json.dumps(report, indent=2, default=str))
    _replace(folder / REPORT_HTML, render(report))
    return folder / REPORT_HTML


def read_report(folder: Path) -> dict[str, Any] | None:
    path = folder / REPORT_JSON
    return json.loads(path.read_text()) if path.is_file() else None


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def render(report: dict[str, Any]) -> str:
    e = html.escape
    data = report.get("data") or {}
    title = f"Nightly {report.get('model')} {report.get('day')}: {report.get('outcome')}"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{e(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:60rem;margin:2rem auto}"
        "table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{border:1px solid #ccc;padding:.25rem .6rem;"
        "text-align:left}.pass{color:#080}.fail{color:#b00}.warn{background:#fff4d6;padding:.5rem}</style>",
        f"</head><body><h1>{e(title)}</h1>",
        f"<p>{e(str(report.get('message', '')))}</p>",
    ]
    parts.append(
        _table(
            "Run",
            {
                "stable (started from)": report.get("stable_version"),
                "new version": report.get("new_version") or "none exported",
                "data window (answers received)": f"{(data.get('window') or {}).get('since')} .. "
                f"{(data.get('window') or {}).get('until')}",
                "labelled items": data.get("items"),
                "held out": report.get("held_out"),
                "sources": ", ".join(data.get("sources") or []),
                "served by versions": data.get("served_by_versions"),
                "took": f"{report.get('seconds', 0):.1f} s",
            },
        )
    )
    for warning in report.get("warnings") or []:
        parts.append(f"<p class='warn'>{e(warning)}</p>")
    gates = report.get("gates") or []
    if gates:
        parts.append(
            "<h2>Gates</h2><table><tr><th>gate</th><th>slice</th><th>metric</th><th>stable</th>"
            "<th>new</th><th>allowed</th><th>verdict</th></tr>"
        )
        for g in gates:
            verdict = "<span class='pass'>passed</span>" if g["passed"] else "<span class='fail'>refused</span>"
            parts.append(
                f"<tr><td>{e(g['name'])}</td><td>{e(g['slice'])}</td><td>{e(g['metric'])}</td>"
                f"<td>{g['stable']:.4f}</td><td>{g['new']:.4f}</td><td>{g['allowed']:.4f}</td>"
                f"<td>{verdict}</td></tr>"
            )
        parts.append("</table>")
    slices = report.get("metrics") or {}
    if slices:
        parts.append(
            "<h2>Metrics per slice</h2><table><tr><th>slice</th><th>items</th><th>stable</th><th>new</th></tr>"
        )
        for name, entry in slices.items():
            parts.append(
                f"<tr><td>{e(name)}</td><td>{entry.get('items')}</td><td>{e(_figures(entry.get('stable')))}"
                f"</td><td>{e(_figures(entry.get('new')))}</td></tr>"
            )
        parts.append("</table>")
    labels = report.get("label_distribution") or {}
    if labels.get("new"):
        parts.append(
            "<h2>Labels: the new data against the original validation set</h2>"
            "<table><tr><th>class</th><th>new data</th><th>original validation</th></tr>"
        )
        for name in sorted(set(labels["new"]) | set(labels.get("original") or {})):
            parts.append(
                f"<tr><td>{e(name)}</td><td>{labels['new'].get(name, 0):.1%}</td>"
                f"<td>{(labels.get('original') or {}).get(name, 0):.1%}</td></tr>"
            )
        parts.append("</table>")
    chosen = data.get("chosen_by_model") or {}
    if chosen:
        parts.append(
            f"<h2>Chosen by the model itself</h2><p>{chosen.get('share', 0):.1%} of the new data "
            f"({chosen.get('items')} items) are items the model flagged for review "
            f"({e(json.dumps(chosen.get('per_reason', {})))}): that selection is a feedback loop of its own."
            "</p>"
        )
    rollout = report.get("rollout")
    if rollout:
        parts.append(f"<h2>Rollout</h2><pre>{e(json.dumps(rollout, indent=2, default=str))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _table(caption: str, rows: dict[str, Any]) -> str:
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows.items())
    return f"<h2>{html.escape(caption)}</h2><table>{cells}</table>"


def _figures(metrics: dict[str, float] | None) -> str:
    return "" if not metrics else ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
