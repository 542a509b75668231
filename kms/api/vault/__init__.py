"""A Vault-Transit-compatible API under ``/v1/transit/``: code written for HashiCorp Vault's
transit engine (hvac, Spring Vault, plain HTTP) works against kms by changing an address and a
certificate. ``views`` holds the routes, ``schemas`` Vault's request fields, ``answers`` Vault's
envelope, and ``wire`` the conversions between Vault's forms and kms's (docs/vault-transit.md)."""
