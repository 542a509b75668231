"""``kms dev-certs --renew``: new certificates and keys in place, the passphrase kept, so the
keystore made with it still opens (docs/operations.md, Development certificates)."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from kms.devcerts import FILE_NAMES
from tests.helpers.config import write_config
from tests.helpers.harness import initialise_database, run_kms

CERTIFICATE_FILES = [name for name in FILE_NAMES if name != "master.key"]


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {
        path.name: (path.read_bytes(), stat.S_IMODE(path.stat().st_mode))
        for path in directory.iterdir()
    }


def test_renew_replaces_the_certificates_and_keeps_the_passphrase(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    assert run_kms("dev-certs", str(secrets), "--client-cn", "builder").returncode == 0
    database = tmp_path / "data" / "dev.db"
    initialise_database(database, secrets / "master.key")
    before = snapshot(secrets)

    renewed = run_kms("dev-certs", "--renew", str(secrets))

    assert renewed.returncode == 0, renewed.stderr
    assert renewed.stdout == (
        f"kms: renewed the dev CA, server and client (CN builder) certificates in {secrets} for "
        "365 days; master.key is unchanged\n"
    )
    after = snapshot(secrets)
    assert set(after) == set(before)  # no temporary file left behind
    assert after["master.key"] == before["master.key"]
    for name in CERTIFICATE_FILES:
        assert after[name][0] != before[name][0], name
        assert after[name][1] == before[name][1], name  # the same modes
    authority = x509.load_pem_x509_certificate(after["ca.pem"][0])
    now = datetime.now(UTC)
    for name, common_name in (("server.crt", "localhost"), ("client.crt", "builder")):
        certificate = x509.load_pem_x509_certificate(after[name][0])
        assert certificate.subject.rfc4514_string() == f"CN={common_name}"
        assert certificate.not_valid_after_utc > now + timedelta(days=364)
        certificate.verify_directly_issued_by(authority)

    # The keystore made with the passphrase opens: kms check reads it with the kept file.
    config = write_config(
        tmp_path / "config.yaml", passphrase_file=secrets / "master.key", dsn=database
    )
    checked = run_kms("check", config=config, cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "all authentic" in checked.stdout


def test_renew_without_a_passphrase_file_writes_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "secrets"
    empty.mkdir()
    result = run_kms("dev-certs", "--renew", str(empty))
    assert result.returncode == 1
    assert result.stderr == (
        f"kms: {empty / 'master.key'} does not exist: nothing to renew (without --renew, kms "
        "dev-certs writes new files and a new passphrase)\n"
    )
    assert list(empty.iterdir()) == []
