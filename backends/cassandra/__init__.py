"""The Cassandra libfs driver (``cassandra:host[:port];...``); see
:mod:`cloudcote.backends.cassandra.driver`.

The driver module is imported lazily by the chain registry, so importing this package
does not need cassandra-driver.
"""
