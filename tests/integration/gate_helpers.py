"""Shared by the tests where the operator holds a model back until a store is fixed
(``test_residency_store_gate``, ``test_model_file_gate``): the operator as a ``sovereign run``
subprocess with a short resync (the stores' re-check period), and a wait that fails with the
stack's conditions and the operator's log. Import ``operator`` into the test module; it needs
the module's own ``cloud`` fixture (a ``SimulatedCloud``) and its stack's name in ``STACK``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sovereign_dev.scenario import OperatorProcess, SimulatedCloud, delete_stack, stack_conditions

RESYNC = 3  # seconds: the operator's resync, and so the stores' re-check period, in these tests
WAIT = 240  # seconds; generous, the machine is shared


@pytest.fixture
def operator(cluster, api_client, namespace: str, cloud: SimulatedCloud, tmp_path,
             request: pytest.FixtureRequest) -> Iterator[OperatorProcess]:
    process = OperatorProcess(kubeconfig=cluster.kubeconfig, namespaces=[namespace], log=tmp_path / "operator.log",
                              resync_seconds=RESYNC).start()
    yield process
    try:
        delete_stack(api_client, namespace, request.module.STACK)  # the finalizer releases the node
    finally:
        process.stop()


def wait_for(what: str, predicate: Callable[[], Any], operator: OperatorProcess, api_client, namespace: str,
             *, stack: str) -> Any:
    """Poll ``predicate``; on timeout fail with the stack's conditions and the operator's log."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.5)
    conditions = {k: (v["status"], v["reason"], v["message"])
                  for k, v in stack_conditions(api_client, namespace, stack).items()}
    pytest.fail(f"timed out after {WAIT}s waiting for {what}\nconditions: {conditions}\n"
                f"operator log:\n{operator.tail()}")
