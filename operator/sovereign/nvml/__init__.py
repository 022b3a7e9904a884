"""All NVML I/O (pynvml) behind a small interface.

``reader`` reads GPUs and XID events through the ``NvmlLibrary`` protocol; ``readings`` is the
plain data it produces. ``open_reader`` picks real NVML, or, for the local cloud only, the
scripted fake of the harness (``sovereign_dev.nvml_fake``, not shipped in the operator's package).
"""

from __future__ import annotations

from pathlib import Path

from sovereign.nvml.reader import NvmlReader, NvmlUnavailable

__all__ = ["NvmlReader", "NvmlUnavailable", "open_reader"]


def open_reader(*, fake_scenario: str | Path | None = None) -> NvmlReader:
    """A reader over real NVML (pynvml), or over ``FakeNvml(fake_scenario)`` when a path is given.

    The reader is not opened yet: its first ``read()`` does that, so a missing driver shows up as
    ``NvmlUnavailable`` there, where the agent reports it, rather than here.
    """
    if fake_scenario is not None:
        from sovereign_dev.nvml_fake import FakeNvml

        return NvmlReader(library=FakeNvml(fake_scenario))
    import pynvml

    return NvmlReader(library=pynvml)
