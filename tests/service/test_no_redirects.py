"""Routing never answers with a redirect: the app's URL map merges no slashes, and whatever rule
would still make Werkzeug redirect (a rule with a trailing slash, added by some later change) is
answered with a JSON 404 instead of a 308 with an HTML body."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient

from kms.app import create_app
from kms.service.keyring import RootKeyring
from kms.settings import Settings


@pytest.fixture
def app(initialised: Settings, keyring: RootKeyring) -> Flask:
    app = create_app(initialised, keyring=keyring)
    app.add_url_rule("/v1/kms/probe/", "probe", lambda: {"probe": True})
    return app


def test_the_url_map_merges_no_slashes(app: Flask) -> None:
    assert app.url_map.merge_slashes is False
    assert all(rule.merge_slashes is False for rule in app.url_map.iter_rules())


@pytest.mark.parametrize(
    "path", ["/v1/kms/probe", "/v1//kms/keys", "/v1/kms/keys/..//public-key", "/v1/kms//probe/"]
)
def test_a_path_werkzeug_would_redirect_is_a_json_404(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404, response.data
    assert "Location" not in response.headers
    assert response.get_json() == {"error": "not found"}


def test_the_canonical_paths_still_answer(client: FlaskClient) -> None:
    assert client.get("/v1/kms/probe/").get_json() == {"probe": True}
    assert client.get("/v1/kms/keys").status_code == 200
