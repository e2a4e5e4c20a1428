"""The README is the front door and the site in docs/ the manual: the README stays short and
names the commands CI runs, and the settings page documents every setting as declared."""

from __future__ import annotations

import re

from musicgen_bento.settings import settings_table

from .conftest import ROOT

README = (ROOT / "README.md").read_text()
SETTINGS_PAGE = (ROOT / "docs" / "settings.md").read_text()


def test_the_settings_page_shows_every_setting_as_declared() -> None:
    shown = re.search(r"checks that it is -->\n\n(.*?)\n\n<!-- end of the settings table -->", SETTINGS_PAGE, re.S)
    assert shown is not None, "the settings page lost its table's markers"
    assert shown.group(1) + "\n" == settings_table(), "regenerate it with `musicgen-bento settings`"


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_the_readme_is_read_in_ten_minutes() -> None:
    assert len(README.splitlines()) <= 350
