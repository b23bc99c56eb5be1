"""Celery workers: thin tasks that take a job id and run it from the job store."""
