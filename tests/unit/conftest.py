"""Fixtures shared by the unit tests: a fake NVML on a scenario file, and Hypothesis's profile.

A test module that needs GPUs defines ``scenario``, usually ``healthy_gpus(gpus=N, seed=...)``;
``reader`` opens the agent's NVML reader on that file and closes it after the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# A test never fails because the machine is slow (CI shares two cores with builds): Hypothesis's
# per-example deadline is a timing assertion, so it is off; speed is the benchmarks' business.
settings.register_profile("sovereign", deadline=None)
settings.load_profile("sovereign")

from sovereign.nvml import open_reader
from sovereign_dev.nvml_fake import healthy_node, write_scenario
from sovereign.nvml.reader import NvmlReader


@pytest.fixture
def healthy_gpus(tmp_path: Path) -> Callable[..., Path]:
    """Write a scenario file of ``gpus`` healthy H100s (identities derived from ``seed``)."""

    def write(*, gpus: int, seed: str) -> Path:
        path = tmp_path / "nvml.json"
        write_scenario(path, healthy_node(gpus=gpus, seed=seed))
        return path

    return write


@pytest.fixture
def reader(scenario: Path) -> Iterator[NvmlReader]:
    opened = open_reader(fake_scenario=scenario)
    opened.open()
    yield opened
    opened.close()
