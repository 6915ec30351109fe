"""The README's configuration tables name every setting, with the defaults the code has."""

from __future__ import annotations

import dataclasses
import re

from app.config import ProfileSettings, Settings, load_settings
from tests.conftest import ROOT

ROW = re.compile(r"^\|\s*`([A-Z_]+)`\s*\|(.*)\|\s*$")


def readme_rows() -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        match = ROW.match(line)
        if match:
            rows[match.group(1)] = [cell.strip().strip("`") for cell in match.group(2).split("|")]
    return rows


def shown(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "*(empty)*" if value == "" else str(value)


def test_every_top_level_setting_is_documented_with_its_default() -> None:
    rows = readme_rows()
    defaults = load_settings({})
    for field in dataclasses.fields(Settings):
        if field.type == "ProfileSettings":
            continue
        name = field.name.upper()
        assert name in rows, f"{name} is missing from the README's configuration table"
        assert rows[name][0] == shown(getattr(defaults, field.name)), name


def test_every_profile_setting_is_documented_with_its_three_defaults() -> None:
    rows = readme_rows()
    defaults = load_settings({}).profiles()
    for field in dataclasses.fields(ProfileSettings):
        name = f"_{field.name.upper()}"
        assert name in rows, f"{name} is missing from the README's profile table"
        expected = [shown(getattr(defaults[p], field.name)) for p in ("application", "infrastructure", "transaction")]
        assert rows[name][:3] == expected, name
