"""The Postman collection in deploy/postman: every route, assertions everywhere, rerunnable.

That newman really passes it against a live server, twice, is tested in
tests/deploy/test_newman.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from kms.api.openapi import openapi_path, routes
from kms.app import routes_only_app

POSTMAN = Path(__file__).parents[2] / "deploy" / "postman"
COLLECTION = POSTMAN / "kms.postman_collection.json"
ENVIRONMENT = POSTMAN / "kms.postman_environment.json"


def requests_in_order() -> list[dict[str, Any]]:
    document = json.loads(COLLECTION.read_text(encoding="utf-8"))
    found = []

    def walk(items: list[dict[str, Any]]) -> None:
        for item in items:
            if "item" in item:
                walk(item["item"])
            else:
                found.append(item)

    walk(document["item"])
    return found


def route_of(item: dict[str, Any]) -> tuple[str, str]:
    request = item["request"]
    path = "/" + "/".join(request["url"]["path"])
    # A segment holding a variable is a path parameter: /keys/postman-missing-{{runId}} is /keys/{}
    return request["method"], re.sub(r"[^/]*\{\{[^}]+\}\}[^/]*", "{}", path)


def script(item: dict[str, Any], listen: str) -> str:
    return "\n".join(
        line
        for event in item.get("event", [])
        if event["listen"] == listen
        for line in event["script"]["exec"]
    )


def test_every_route_is_in_the_postman_collection() -> None:
    served = {
        (method, re.sub(r"\{[^}]+\}", "{}", openapi_path(rule)))
        for rule, method in routes(routes_only_app())
    }
    covered = {route_of(item) for item in requests_in_order()}
    assert served - covered == set(), "routes without a request in the collection"
    assert covered - served == set(), "requests for routes the app does not serve"


def test_every_request_asserts_its_status_and_its_body() -> None:
    for item in requests_in_order():
        tests = script(item, "test")
        assert re.search(r"pm\.response\.to\.have\.status\(\d{3}\)", tests), item["name"]
        assert re.search(r"pm\.expect\(", tests), item["name"]


def test_every_request_goes_to_base_url() -> None:
    for item in requests_in_order():
        assert item["request"]["url"]["raw"].startswith("{{baseUrl}}/"), item["name"]
    environment = json.loads(ENVIRONMENT.read_text(encoding="utf-8"))
    values = {value["key"]: value["value"] for value in environment["values"]}
    assert values == {"baseUrl": "https://localhost:8080"}


def test_key_ids_are_unique_per_run_and_deletion_comes_last() -> None:
    items = requests_in_order()
    assert "{{$timestamp}}" in script(items[0], "prerequest")
    assert 'collectionVariables.set("runId"' in script(items[0], "prerequest")
    creates = [item for item in items if route_of(item) == ("POST", "/v1/kms/keys")]
    for item in creates:
        body = json.loads(item["request"]["body"]["raw"])
        assert "{{runId}}" in body["key_id"] or body["key_id"] == "{{encKeyId}}", item["name"]
    # A DELETE with ?pending_days only schedules the deletion (it is cancelled right after);
    # the first DELETE that destroys a key starts the clean-up.
    destroys = [
        route_of(item)[0] == "DELETE" and "pending_days" not in item["request"]["url"]["raw"]
        for item in items
    ]
    first_delete = destroys.index(True)
    assert all(route_of(item)[1] != "/v1/kms/keys" for item in items[first_delete:])
    after = [route_of(item) for item in items[first_delete:]]
    assert all(method in ("DELETE", "GET") for method, _ in after), after


def test_values_made_by_one_request_feed_the_next() -> None:
    items = requests_in_order()
    made = {}
    for index, item in enumerate(items):
        for name in re.findall(r'collectionVariables\.set\("(\w+)"', script(item, "test")):
            made.setdefault(name, index)
    for index, item in enumerate(items):
        used = set(re.findall(r"\{\{(\w+)\}\}", json.dumps(item["request"]))) - {"baseUrl", "runId"}
        for name in used:
            assert name in made and made[name] < index, (item["name"], name)
    assert {"encKeyId", "signKeyId", "ciphertext", "signature"} <= set(made)
