"""pytest fixtures for real MinIO servers: one per region, started once per test session.

``minio_servers`` maps each region of ``minio.DEFAULT_REGIONS`` (me-central-1, eu-west-1) to a
started ``MinioServer`` with a static KMS key (so default encryption works);
``minio_server_without_kms`` is a plain server, where MinIO refuses default encryption;
``minio_bucket_name`` is a fresh bucket name for one test. Tests that use any of them get the
``minio`` marker.

The shared pytest plugin imports these (``from sovereign_dev.minio_fixtures import *``)
and calls ``mark_minio_items`` from its collection hook; until then, load this module as a plugin
(``pytest -p sovereign_dev.minio_fixtures``), where its own hook adds the marker.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator

import pytest

from sovereign_dev.minio import DEFAULT_REGIONS, MinioFleet, MinioServer

__all__ = ["MINIO_FIXTURES", "mark_minio_items", "minio_bucket_name", "minio_server_without_kms",
           "minio_servers"]

MINIO_FIXTURES = frozenset({"minio_servers", "minio_server_without_kms"})


@pytest.fixture(scope="session")
def minio_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, MinioServer]]:
    """region -> a running MinIO server for that region (KMS configured); stopped at the end."""
    with MinioFleet(root=tmp_path_factory.mktemp("minio"), regions=DEFAULT_REGIONS) as fleet:
        yield fleet.servers


@pytest.fixture(scope="session")
def minio_server_without_kms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinioServer]:
    """A running MinIO server for me-central-1 without a KMS (default encryption unsupported)."""
    root = tmp_path_factory.mktemp("minio-plain")
    with MinioServer(region=DEFAULT_REGIONS[0], root=root, kms=False) as server:
        yield server


@pytest.fixture
def minio_bucket_name(request: pytest.FixtureRequest) -> str:
    """A bucket name no other test uses: the test's name, made S3-safe, plus a random suffix."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    return f"{slug or 'test'}-{secrets.token_hex(4)}"


def mark_minio_items(items: list[pytest.Item]) -> None:
    """Add the ``minio`` marker to every test that uses a MinIO fixture, directly or not."""
    for item in items:
        if MINIO_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.minio)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_minio_items(items)
