"""The S3 libfs driver (``s3:bucket=...``); see :mod:`cloudcote.backends.s3.driver`.

The driver module is imported lazily by the chain registry, so importing this package
does not need aiobotocore.
"""
