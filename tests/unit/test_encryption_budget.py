"""The encryptions a process has reserved and not used yet (kms.service.keys.limits)."""

from __future__ import annotations

from kms.service.keys.limits import EncryptionBudget


def test_a_reservation_is_handed_out_until_it_is_used_up() -> None:
    budget = EncryptionBudget()
    slot = ("orders", "incarnation-1", 1, 1000)
    assert not budget.take(slot, 1)  # nothing reserved yet: the database is asked
    budget.add(slot, 3)
    assert budget.take(slot, 2)
    assert not budget.take(slot, 2)  # one left: never more than was reserved
    assert budget.take(slot, 1)
    assert not budget.take(slot, 1)


def test_only_the_keys_latest_slot_is_used() -> None:
    """A new block for a key's new version (or new limit, or new incarnation) ends what was left
    of the old slot: it is never used again (it stays counted as used in the database)."""
    budget = EncryptionBudget()
    old, new = ("orders", "i", 1, 1000), ("orders", "i", 2, 1000)
    budget.add(old, 5)
    budget.add(new, 5)
    assert not budget.take(old, 1)
    assert budget.take(new, 5)
    lowered = ("orders", "i", 2, 500)
    budget.add(lowered, 1)
    assert not budget.take(new, 1)
    assert budget.take(lowered, 1)


def test_other_keys_keep_their_reservations_and_the_budget_is_bounded() -> None:
    """One entry per key, however many keys a process encrypts under (a million keys must not
    make a million entries, nor make each reservation scan them), the least recently reserved
    forgotten first."""
    budget = EncryptionBudget(max_keys=3)
    for name in ("a", "b", "c", "d"):
        budget.add((name, "i", 1, 100), 2)
    assert len(budget) == 3
    assert not budget.take(("a", "i", 1, 100), 1)  # forgotten: a new block will be reserved
    for name in ("b", "c", "d"):
        assert budget.take((name, "i", 1, 100), 2)
