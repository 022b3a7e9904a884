"""The residency evidence report: ``services.residency_report.Evidence`` as HTML or JSON.

HTML comes from the Jinja2 template ``templates/residency.html.j2`` packaged here: one
self-contained page (no scripts, no external assets, printable) for an auditor, every value
escaped. JSON is the evidence model itself, camelCase keys, for machines and archives. Both
are deterministic for the same evidence. Called by ``cli.report``.
"""

from __future__ import annotations

from datetime import UTC

import jinja2

from sovereign.services.residency_report import Evidence

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("sovereign.report", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
_TEMPLATES.filters["timestamp"] = lambda moment: moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

FORMATS = ("html", "json")


def render(evidence: Evidence, *, fmt: str) -> str:
    """The report in ``fmt`` (one of ``FORMATS``)."""
    if fmt == "json":
        return evidence.model_dump_json(indent=2) + "\n"
    if fmt == "html":
        return _TEMPLATES.get_template("residency.html.j2").render(evidence=evidence)
    raise ValueError(f"unknown report format {fmt!r}: use one of {', '.join(FORMATS)}")


__all__ = ["FORMATS", "render"]
