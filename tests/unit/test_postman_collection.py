"""The Postman collection in deploy/ covers every route the app serves, with the right method."""

from __future__ import annotations

import json
import re
from pathlib import Path

from flask import Flask

from kms.api import crypto, health, keys

COLLECTION = Path(__file__).parents[2] / "deploy" / "postman" / "kms.postman_collection.json"


def app_routes() -> set[tuple[str, str]]:
    app = Flask("routes")
    app.register_blueprint(keys.blueprint)
    app.register_blueprint(crypto.blueprint)
    app.register_blueprint(health.blueprint)
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<[^>]+>", "{}", rule.rule)
        routes |= {(method, path) for method in rule.methods - {"HEAD", "OPTIONS"}}
    return routes


def collection_routes() -> set[tuple[str, str]]:
    document = json.loads(COLLECTION.read_text())
    routes = set()
    for folder in document["item"]:
        for item in folder["item"]:
            request = item["request"]
            path = "/" + "/".join(request["url"]["path"])
            routes.add((request["method"], re.sub(r"\{\{[^}]+\}\}", "{}", path)))
    return routes


def test_every_route_is_in_the_postman_collection() -> None:
    assert app_routes() == collection_routes()
