"""smsgw's workers: the RQ jobs, the provider client and the rules they share with the API.

Nothing in this package imports Flask: a worker host needs only Redis and the provider.
"""
