"""What smsgw keeps in Redis, and how: the storage layer.

- :mod:`workers.storage.schema`: every key (one table kept true by ``tests/test_schema.py``), the
  records its hashes hold (:class:`~workers.storage.schema.Message`,
  :class:`~workers.storage.schema.Chunk`, …), their states and every lifetime;
- :mod:`workers.storage.codecs`: each packed value format, one codec each;
- :mod:`workers.storage.scripts`: every Lua script, called with named KEYS and ARGV.

Nothing outside this package spells a key, parses a packed value or holds Lua.
"""
