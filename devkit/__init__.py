"""What runs only on a developer's machine and in tests, never in production: the provider
simulator, a private Redis server, and ``smsgw run`` (``make run``) that starts them with the
gateway. ``workers/`` and ``gateway/`` never import this package."""
