"""Pure cryptographic functions over bytes, built on ``cryptography``.

Nothing here touches a database, a file, a socket or Flask. Functions that check something raise
(``kms.errors.InvalidCiphertext``, ``InvalidSignature``, ``UnwrapFailed``, ``IntegrityFailure``,
``InvalidKDFParameters``) instead of returning a bool, and no ``cryptography`` exception leaves
this package.
"""
