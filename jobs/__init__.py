"""The job core, shared by the API (:mod:`service`) and the workers (:mod:`worker`), with no web framework
and no Celery worker in it:

- :mod:`jobs.settings`: the one cached :class:`~jobs.settings.Settings` (``RVSM_*``);
- :mod:`jobs.db`: the job database's tables and engine (SQLite by default, PostgreSQL by URL);
- :mod:`jobs.states`: the job lifecycle, every state and transition, and the store's reads;
- :mod:`jobs.layout`: a job's directory (inputs, resume state, result, artifacts) and atomic writes;
- :mod:`jobs.counters`: the counters and worker heartbeats kept in the database;
- :mod:`jobs.queue`: the queue contract (task name, queues, publishing);
- :mod:`jobs.reconciler`: the sweep that repairs the store from itself, run by API and workers;
- :mod:`jobs.floors`: the dependency floors both refuse to start below.

Imports point one way: ``worker`` -> ``jobs``, ``service`` -> ``jobs``, all three -> ``rvsm``; ``jobs`` imports
only ``rvsm`` (and the libraries).
"""
