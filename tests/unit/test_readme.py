"""The README's configuration table and key map stay true to the code."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import AliasChoices

from aam_dcl import keys
from aam_dcl.config import Settings

README = (Path(__file__).parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_configuration_table_and_nothing_else() -> None:
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", README, flags=re.MULTILINE))
    settings = {
        str(choice)
        for field in Settings.model_fields.values()
        if isinstance(field.validation_alias, AliasChoices)
        for choice in field.validation_alias.choices
    }
    assert documented == settings


def test_every_key_is_in_the_key_map() -> None:
    t, c = "{tenant}", "{connector}"
    for key in (
        keys.stream(t, c),
        keys.group(t),
        keys.processed_set(t),
        keys.processed_expiry(t),
        keys.dead_letter_stream(t, c),
        keys.sync_state(t, c),
        keys.lease(t, c),
        keys.fence(t, c),
        keys.consumer_heartbeat(t, "{consumer}"),
        keys.paused_flag(t),
    ):
        assert f"| `{key}` |" in README, key
