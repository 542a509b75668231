"""KeyState: the stored strings of ``keys.state``, interchangeable with the strings rows hold."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

import pytest

from kms.service.integrity import encode_key_row
from kms.store.records import KeyRecord, KeyState

KEY = KeyRecord(
    key_id="orders",
    purpose="encrypt",
    algorithm="AES-256-GCM",
    state="enabled",
    latest_version=1,
    incarnation="00112233445566778899aabbccddeeff",
    created_at=datetime(2026, 11, 28, 12, 0, tzinfo=UTC),
)


def test_the_states_are_the_strings_every_database_holds() -> None:
    # Rows written by every release hold these strings: renaming one strands existing keys.
    assert {state.value for state in KeyState} == {"enabled", "disabled", "pending_deletion"}
    assert KeyState.ENABLED == "enabled"
    assert KeyState.DISABLED == "disabled"
    assert KeyState.PENDING_DELETION == "pending_deletion"


@pytest.mark.parametrize("state", list(KeyState))
def test_a_state_is_its_string_wherever_it_goes(state: KeyState) -> None:
    # A record built with the enum and one read back from a row (a plain str) must MAC, compare
    # and serialise alike, or a row kms wrote would fail its own MAC check once read back.
    from_enum = dataclasses.replace(KEY, state=state)
    from_row = dataclasses.replace(KEY, state=str(state.value))
    assert type(from_row.state) is str
    assert from_enum == from_row
    assert encode_key_row(from_enum) == encode_key_row(from_row)
    assert json.dumps(from_enum.state) == json.dumps(from_row.state)
    assert f"{from_enum.state}" == from_row.state
    assert KeyState(from_row.state) is state
