"""smsgw's benchmarks: ``python -m bench`` (or ``make bench``)."""


def noop() -> None:
    """The baseline job: RQ's own per-job cost and nothing else."""
