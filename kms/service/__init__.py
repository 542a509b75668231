"""The rules: key lifecycle, crypto operations and the keyring that holds the master key.

Nothing here reads ``flask.request`` or ``current_app``; everything arrives through constructors.
"""
