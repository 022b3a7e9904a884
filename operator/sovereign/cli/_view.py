"""Terminal rendering of an ``Overview``: the live view of ``sovereign status`` and ``dev up``.

Pure presentation (rich renderables from the snapshot dataclasses of ``services.overview``);
``watch`` refreshes it in place with ``rich.live`` until interrupted.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from sovereign.services.fetch_model import human_bytes
from sovereign.services.overview import ConditionView, NodeView, Overview, StackView

_STYLE = {"True": "green", "False": "red", "Unknown": "yellow"}


def _status(value: str) -> Text:
    return Text(value, style=_STYLE.get(value, ""))


def cache_text(cache: dict) -> str:
    """A model's ``status.models[].cache`` in a few words: the layout, and a shared cache's state
    (``SharedVolume Filled: 37 files, 145.0 GiB``); empty for weights that are not copied."""
    if not cache:
        return ""
    text = " ".join(part for part in (cache.get("layout", ""), cache.get("state", "")) if part)
    if cache.get("state") == "Filled":
        text += f": {cache.get('files', 0)} file(s), {human_bytes(cache.get('bytes', 0))}"
    return text


def stack_panel(stack: StackView) -> Panel:
    conditions = Table(show_edge=False, expand=True, title="conditions", title_justify="left")
    for column in ("type", "status", "reason", "message"):
        conditions.add_column(column, overflow="fold")
    for c in stack.conditions:
        conditions.add_row(c.type, _status(c.status), c.reason, c.message)

    models = Table(show_edge=False, expand=True, title="models", title_justify="left")
    for column in ("model", "serves", "ready", "cache", "endpoint"):
        models.add_column(column, overflow="fold")
    for m in stack.models:
        ready = f"{m.get('readyReplicas', 0)}/{m.get('replicas', 0)}"
        models.add_row(m.get("name", ""), m.get("model", ""), ready, cache_text(m.get("cache") or {}),
                       m.get("endpoint", ""))

    pools = Table(show_edge=False, expand=True, title="node pools", title_justify="left")
    for column in ("pool", "nodes", "ready", "GPUs", "unhealthy GPUs"):
        pools.add_column(column)
    for p in stack.node_pools:
        pools.add_row(p.get("name", ""), str(p.get("nodes", 0)), str(p.get("readyNodes", 0)),
                      str(p.get("gpus", 0)), str(p.get("unhealthyGpus", 0)))

    parts: list[RenderableType] = [conditions if stack.conditions else
                                   Text("no status yet: is the operator running?", style="yellow")]
    parts += [table for table, rows in ((models, stack.models), (pools, stack.node_pools)) if rows]
    if stack.violations:
        violations = Table(show_edge=False, expand=True, title="residency violations",
                           title_justify="left", style="red")
        for column in ("kind", "object", "rule", "since", "message"):
            violations.add_column(column, overflow="fold")
        for v in stack.violations:
            violations.add_row(v.get("kind", ""), f"{v.get('namespace', '')}/{v.get('name', '')}",
                               v.get("rule", ""), v.get("since", ""), v.get("message", ""))
        parts.append(violations)
    ready = "[green]Ready[/]" if stack.ready else "[yellow]not Ready[/]"
    title = (f"{stack.namespace}/{stack.name}  {ready}  jurisdiction {stack.jurisdiction} "
             f"({', '.join(stack.regions)}, {stack.enforcement})")
    return Panel(Group(*parts), title=title, title_align="left")


def _health(condition: ConditionView | None) -> Text:
    if condition is None:
        return Text("no agent", style="dim")
    return Text(f"GPUHealthy={condition.status} {condition.reason}",
                style=_STYLE.get(condition.status, ""))


def nodes_table(nodes: tuple[NodeView, ...]) -> Table:
    table = Table(title="GPU nodes", title_justify="left", expand=True)
    for column in ("node", "region", "pool", "GPUs", "ready", "GPU health", "detail"):
        table.add_column(column, overflow="fold")
    for n in nodes:
        detail = n.gpu_healthy.message if n.gpu_healthy and n.gpu_healthy.status != "True" else ""
        table.add_row(n.name, n.region, n.pool or "-", str(n.gpus),
                      _status("True" if n.ready else "False"), _health(n.gpu_healthy),
                      detail or ", ".join(n.taints))
    return table


def render(overview: Overview) -> RenderableType:
    parts: list[RenderableType] = [stack_panel(s) for s in overview.stacks]
    if not overview.stacks:
        parts.append(Text("no SovereignStack found", style="yellow"))
    parts.append(nodes_table(overview.nodes))
    return Group(*parts)


def watch(read: Callable[[], Overview], *, console: Console, interval: float = 2.0,
          header: RenderableType | None = None) -> None:
    """Refresh the view every ``interval`` seconds until Ctrl-C."""
    def frame() -> RenderableType:
        body = render(read())
        return Group(header, body) if header is not None else body

    with Live(frame(), console=console, refresh_per_second=4, screen=False) as live:
        while True:
            time.sleep(interval)
            live.update(frame())
