"""rvsm-service: the REST API and the command line around the :mod:`rvsm` library."""
