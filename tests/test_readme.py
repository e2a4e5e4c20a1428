"""The README is the user's manual: it documents every setting and the commands CI runs."""

from __future__ import annotations

from musicgen_bento.settings import setting_specs

from .conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_every_setting_is_in_the_settings_table() -> None:
    for spec in setting_specs():
        assert f"| `{spec['env']}` | `{spec['flag']}`" in README, spec["env"]


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()
