"""What the tests of every tier share, written once: keystores and services in process
(``keystore``), config files (``config``), the TLS side of a Flask test request (``tls``), kms
processes and servers (``harness``, ``identities``, ``raw``, ``hostile``), databases of earlier
releases (``old_release``), and what a test needs from the machine (``machine``, ``postgres``).

Fixtures stay in the conftests: ``tests/conftest.py`` for those of every tier, each tier's own
beside its tests.
"""
