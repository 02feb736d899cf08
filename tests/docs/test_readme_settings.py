"""The README's settings table is the service's settings: every ``SERVING_*`` setting has a row with its default."""

from __future__ import annotations

import re
from pathlib import Path

from service.settings import ServiceSettings

README = Path(__file__).resolve().parents[2] / "README.md"
ROW = re.compile(r"^\| `SERVING_([A-Z0-9_]+)` \| `([^`]*)` \| (.+) \|$", re.M)


def shown_default(name: str) -> str:
    """The default as the table shows it: ``—`` for none, ``(all)`` for an empty list."""
    field = ServiceSettings.model_fields[name]
    value = field.get_default(call_default_factory=True)
    if value is None or value == "":
        return "—"
    if isinstance(value, list | tuple | set | frozenset):
        return ", ".join(map(str, value)) if value else "(all)"
    return str(value)


def expected_row(name: str) -> str:
    description = " ".join((ServiceSettings.model_fields[name].description or "").split())
    return f"| `SERVING_{name.upper()}` | `{shown_default(name)}` | {description} |"


def test_every_setting_has_a_row_in_the_readme() -> None:
    rows = {name.lower() for name, _, _ in ROW.findall(README.read_text())}
    missing = [name for name in ServiceSettings.model_fields if name not in rows]
    assert not missing, "rows to add to the README's settings table:\n" + "\n".join(map(expected_row, missing))


def test_the_readme_names_no_setting_the_service_lacks() -> None:
    rows = {name.lower() for name, _, _ in ROW.findall(README.read_text())}
    assert rows <= set(ServiceSettings.model_fields), sorted(rows - set(ServiceSettings.model_fields))


def test_each_row_shows_the_default_the_service_uses() -> None:
    shown = {name.lower(): default for name, default, _ in ROW.findall(README.read_text())}
    wrong = {
        name: (shown[name], shown_default(name))
        for name in ServiceSettings.model_fields
        if name in shown and shown[name] != shown_default(name)
    }
    assert not wrong, f"README default vs service default: {wrong}"


def test_each_setting_has_one_row_in_the_table_format() -> None:
    lines = [line for line in README.read_text().splitlines() if line.startswith("| `SERVING_")]
    assert [line for line in lines if not ROW.match(line)] == []
    names = [ROW.match(line).group(1) for line in lines]  # type: ignore[union-attr]
    assert sorted({n for n in names if names.count(n) > 1}) == []
