"""The Ray driver: claims jobs with leases, runs them on Ray workers, writes results."""
