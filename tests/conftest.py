"""Fixtures shared by the test packages: ``lib/`` (the library), ``api/`` (the HTTP API with no worker),
``worker/`` (the API with real worker processes, and the job core), ``e2e/`` (``rvsm serve``, the browser,
the drills, the README and the benchmarks' scripts).

A test module sets what its fixtures get with module attributes: ``API_SETTINGS`` (more ``Settings`` for
``client`` and ``stack``) and ``WORKER_ENV`` (more environment for ``stack``'s worker).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.service_helpers import Stack, api_and_worker, api_client


def _name(request: pytest.FixtureRequest) -> str:
    return request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")[:20]


@pytest.fixture(scope="module")
def client(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """The API on the module's own store and queue; nothing consumes the queue, so jobs stay queued."""
    name = _name(request)
    with api_client(tmp_path_factory.mktemp(name), name, **getattr(request.module, "API_SETTINGS", {})) as c:
        yield c


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The API and one real worker process on the module's own store and queue."""
    name = _name(request)
    with api_and_worker(
        tmp_path_factory.mktemp(name),
        name,
        env=getattr(request.module, "WORKER_ENV", None),
        **getattr(request.module, "API_SETTINGS", {}),
    ) as s:
        yield s
