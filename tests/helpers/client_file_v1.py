"""The client file format version 1, as kms wrote it before version 2: its writer, kept only here,
and a file it wrote, kept byte for byte.

kms no longer writes version 1 but must still read it. ``encrypt_stream_v1`` is the version 1
writer unchanged (against a live server, through any ``DataKeySource``); ``V1_FILE`` is a file the
version 1 writer made: plaintext ``V1_PLAINTEXT`` under the data key ``V1_DATA_KEY``, wrapped as
``V1_WRAPPED`` under the key ``"fixture-key"`` with context ``{"tenant": "a"}``, in 1 KiB chunks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import struct
from collections.abc import Mapping
from typing import BinaryIO

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms.client.files import DataKeySource

V1_DATA_KEY = bytes(range(32))
V1_WRAPPED = "v1:wrapped-by-the-fixture"
V1_KEY_ID = "fixture-key"
V1_CONTEXT = {"tenant": "a"}
V1_PLAINTEXT = bytes(i % 251 for i in range(2 * 1024 + 100))
V1_FILE = base64.b64decode(
    "S01TRgEAAAQAQDunNiuMdQALZml4dHVyZS1rZXkAAAAOeyJ0ZW5hbnQiOiJhIn0AGXYxOndyYXBwZWQtYnktdGhlLWZpeHR1"
    "cmU9UKbluagxZeAQGu835257zn1OYA6jonxgOdwlSs+UeWiTs0O/ntnWOxXf/b45tD32f8g75LX6Y5L90AASJB/ZfyJmO0Ks"
    "HoHQd2sFQJGeMKO6Wg/9ZVxxdYEkav38N/9ERuvhUi6vxz6RmggjKSfwlb+ET4P0tJRkxS9thvPu4VvveXS6hgGYfxI28mU/"
    "7KFSPHztpWQCvUx8IFn4vDJvT3peVjCS8Px/C3S/OoFlN5Av7lZsx4pp9f1DJgxASE/BrhEC+qqj2ai/F1BU3WwXeuodKmfI"
    "dERcuWCiu6Hb+XPSMYgPJV1auH1TrWTmlVy/WrF5cveRdMYyISDRjiuwUjUW9vzoaJASEuzu8GVj84TC/aNAYYK6Q0AZR9AR"
    "xyoFTg62FGUajwQNu03WxNoaUreeUtgeCxVR7ABODJvj9Yxmk92zb893KLUGbiUIPGwDJEPgqx75obDtrJZcjgCYSD7X7jKq"
    "Kzji4cqyC/nktOw3ZnOSc6UqVgldb99bBobq8h1xgcDdr1yve/o9KzzXFgDdnoVCBnRT//rFdn4WTwTiTMM71aMxfakIrTzE"
    "ziiiyVF4zMUHpGtUM5xpNvlLE919OqKVkASfo6GjHhz74Xgeu0LA9mcXYML0CJkRsX0U2YZxtnJmGyAtxQl8Gf5u7KoxcpZ9"
    "JXWyX6jNuZpc8Bl1AHefCawFvzlI3splvyobQ4+IDmLqttyaNKzUoWBLqn+Jafhz0mLrzlLw3vff/DxoD4iXJ0qAMoLfcxED"
    "Xj06Pk9LFF6V3y7uNLiEwaHittMNsJLjlO3pKbeqMWq8oBG/dVVPzZjIgQ/nQbPna0lJqdpSJ7+JtznWENv7DRltCvNDFISq"
    "pD9y9uJOcU+OLNuCWXY0iqOEXa0ilkSGCAT+OFIC8uwRHUrvZ3+YXR1Zr+pXloxhx2ch1dcU8QsIOqd1OjbWOjG8JLyh3W14"
    "sjVfSXrfx+J8nC/pmtrihGd8wznzuficuWO/FS2nuOFdSwcuEW55yZQgBBLTvyaE7ZYgW3Hsmlr/K9XspJvNprxqv+lFhE2W"
    "qbbbRRV3xz2Xane1WZp4m6S308AdyHjmJLTy+PBthNXVruKMGAhVxOLQGSMjNlNM8L1ADEFOihI4ubK+aX55EmQbD9kKB1GL"
    "OYrgAdOVAmorFv3mnK5jQxB4GdqTJ095/q3IaehvIIXrrxDR19F6u7g63BmnnBkSi++fsgQPS6GBMUKAQdqMgmy8Mhft0wQz"
    "1pzl4dzEDCk93OkpP8prtBT3b/4J5Jm9+DXY4sJX7aUX4RKJsueBYNZCB8FtcOtPIT015z9sPHQUzgLosntI0Ib1kfmvRDLt"
    "wJ0xfHPMK8spBVtZiyvvJ9aGfrfzbUcguIFTEweRicAPsSE9i5rlap7Ome2lg7WGRxLUkLX9vt/wSk8ChjPbAAmHxwL2woqQ"
    "BNQF/Rlc5sjo3s2KL8Zlgyu9AM8WTjuADQGmAkkWReMUcyz15GgoP1MrqRXMUvH+DZDMc08ufp3PqDQbOcglOJYgk1AkeXuj"
    "87fDNwX4KvNGn0ZqEdKrfKlYaOfI4/NtOZa4QPajJXF+LwdqgsAiNgt7cyZX1NMSum2AQyBGR4lD5l54yKR+6ihrBQxcnPGI"
    "rr3v4ExdyPv0DZbHNkjPK3QOG9lFxGFRqeev8V7FiklZUj1ZRbpm0rRhZDoi6mhJBcakxFSp9R12qBDxueUOfo7KuXmOSDLn"
    "BgJH+Z96z6Hb2FCVbPh0nAhS4aHYahHQwj5HorzzSDFCQqzuuVlFqrWS2LdqTnbFQDygfL+83mr0H5gdpEbPr3nYahsDPbo+"
    "tVAG6GF1GCzemfIeeawD5M8dsAFJdOZsRyKjmp44yeADM2M0a+0QMG21BOPuz9JgXTbywrtwnbxjh39KN36UhjHia1ulqw70"
    "cAuaBbzkLKB1jiGW765EuJkhpscmwklJMo26ReoLYgsZgbz2KdI3ILCIxtTOVrw2YbbRR1vSGWOpJ0FLXfQgLITmKpx0WaMC"
    "qfusHn98y6gOZzy5G6pewurm4iqFTTHfakOQd5OsJ9cgdNHW7Ua81fbUK5kRTTY24GO5qPhYEZSIMBWoX9+op1074v3C5V7L"
    "HaFtDGWO4kixtDuMOb0IopuBqM5rSiZu7D+SjFbdTZYLrQIl+5t5lQwfuNdyfgFoIIf7bQUyNRObNyJ3tY38FGdrXs+PM7Xe"
    "kPcLj9wqh1yxZoRp5CZ35oO/gbQAPaiPA8waYoZbmgYlEFX8wzT3Qk7tX4P3og2cWytXCJ9d7CTS+S5zYIsjvNhZGbg+keAW"
    "AlW+RN/U2QXfxx407vWHC7UX9RFO1jUmMW/r8i2mXb+tYPzkokhf/eu4foMb5xo9EylsA5Mw+zAkdpr4qzSHy01jfgC+HbaO"
    "cgCO5tDXq7HAlPSI8znt2Afeo43xRY8rZ9a0RXX3eQhLX3pQG9bcnFLDjPZGh5PXyQEZ4eBWcb65Vwth7BASoL5jeI3g/Gcx"
    "ZNe7EMkaPluz+Z0U0kWb//Ae0zUQr0ELJ2c3sSEjdbZytzGVJBN8lBr+i5GJsdQzcHnjA1UXhRWeagy+wZB1ktqLUnOlN4NQ"
    "OOmWK4Hh8hEp9V9b+IqgctSoxwiW2jponcV2fhWGo1JvA8viH6MuyxCdaHe5Eij3TvtCeDc/TplQ7asd434LTJnGUtMsdl5Z"
    "ZWGDzso9Lj4NkjFCjOJGseytb+maiulCylSey/aAdchY51H98k9bjsoNbs/hgRRMH/ewcFIGuWxebgiYYYQGh3cUuIbx9qgr"
    "cp4KOfSt3LLgUxgFsIfeuf6rnmVXb+yyT2f52hQh+SgGlUPQzy0BmwucRu1SKShjCqua74HDAr82UgR2HNfLwavsCjqriUQp"
    "MQvzsOLD0qhySUjWUeqGEVU8sds9jT8Gbt6SJiAUlEBT7LBKNWY="
)

_FIXED = struct.Struct(">4sBI7s")


def _canonical_context(context: Mapping[str, str] | None) -> bytes:
    if not context:
        return b""
    return json.dumps(dict(context), sort_keys=True, separators=(",", ":")).encode("utf-8")


def _header(chunk_size: int, prefix: bytes, key_id: str, context: bytes, wrapped: str) -> bytes:
    key_id_bytes = key_id.encode("utf-8")
    wrapped_bytes = wrapped.encode("ascii")
    return b"".join(
        (
            _FIXED.pack(b"KMSF", 1, chunk_size, prefix),
            struct.pack(">H", len(key_id_bytes)),
            key_id_bytes,
            struct.pack(">I", len(context)),
            context,
            struct.pack(">H", len(wrapped_bytes)),
            wrapped_bytes,
        )
    )


def encrypt_stream_v1(
    source: DataKeySource,
    key_id: str,
    plaintext: bytes,
    dst: BinaryIO,
    *,
    context: Mapping[str, str] | None = None,
    chunk_size: int = 64 * 1024,
) -> None:
    """Write ``plaintext`` as a version 1 file, exactly as the version 1 writer did."""
    data_key = source.generate_data_key(key_id, bytes=32, context=context)
    assert data_key.plaintext is not None
    prefix = secrets.token_bytes(7)
    header = _header(chunk_size, prefix, key_id, _canonical_context(context), data_key.ciphertext)
    header_digest = hashlib.sha256(header).digest()
    aead = AESGCM(data_key.plaintext)
    dst.write(header)
    chunks = [plaintext[i : i + chunk_size] for i in range(0, len(plaintext), chunk_size)]
    if not chunks or len(chunks[-1]) == chunk_size:
        chunks.append(b"")
    for counter, chunk in enumerate(chunks):
        last = counter == len(chunks) - 1
        nonce = prefix + struct.pack(">IB", counter, 1 if last else 0)
        dst.write(aead.encrypt(nonce, chunk, header_digest + (b"\x01" if last else b"\x00")))
