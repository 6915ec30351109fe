"""The README's configuration section: a few settings, with the defaults the code has, and where the rest are."""

from __future__ import annotations

import re

from app.config import PROFILE_DEFAULTS, PROFILE_SETTINGS, SETTINGS, load_settings
from tests.conftest import ROOT

ROW = re.compile(r"^\|\s*`([A-Z_]+)`\s*\|\s*(`[^`]*`|\*\(empty\)\*)\s*\|")


def configuration_section() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("\n## Configuration\n")
    end = readme.find("\n## ", start + 1)
    return readme[start : end if end != -1 else len(readme)]


def loaded_default(variable: str) -> object:
    settings = load_settings({})
    for profile in PROFILE_DEFAULTS:
        prefix = f"{profile.upper()}_"
        if variable.startswith(prefix) and variable.removeprefix(prefix).lower() in PROFILE_SETTINGS:
            return getattr(settings.profiles()[profile], variable.removeprefix(prefix).lower())
    assert variable.lower() in SETTINGS, f"the README names {variable}, which is no setting"
    return getattr(settings, variable.lower())


def test_the_readme_points_at_the_generated_reference() -> None:
    section = configuration_section()
    assert "(docs/configuration.md)" in section and "make docs" in section
    assert (ROOT / "docs" / "configuration.md").exists()


def test_the_settings_the_readme_shows_have_the_defaults_the_code_has() -> None:
    rows = [ROW.match(line) for line in configuration_section().splitlines()]
    shown = {match.group(1): match.group(2) for match in rows if match}
    assert 3 <= len(shown) <= 6, "the README shows the most common settings only; the rest are in docs/"
    for variable, cell in shown.items():
        default = loaded_default(variable)
        expected = str(default).lower() if isinstance(default, bool) else str(default)
        assert cell == ("*(empty)*" if expected == "" else f"`{expected}`"), variable
