"""The label values of kms's request metrics come from closed sets, whatever a client sends
(docs/operations.md, Health and metrics: bounded series)."""

from __future__ import annotations

from kms.api.metrics import METHODS, OTHER_METHOD, STATUSES, method_label, status_label


def test_a_method_outside_the_standard_ones_counts_as_other() -> None:
    for method in METHODS:
        assert method_label(method) == method
    for method in ("ODD00001", "get", "PROPFIND", "BREW", "X" * 20, ""):
        assert method_label(method) == OTHER_METHOD


def test_every_status_maps_into_a_closed_set() -> None:
    labels = {status_label(status) for status in range(0, 1000)}
    assert labels == {str(status) for status in STATUSES} | {
        "1xx",
        "2xx",
        "3xx",
        "4xx",
        "5xx",
        "other",
    }
    assert status_label(418) == "4xx"
    assert status_label(503) == "503"
