"""The figure a benchmark reports: a named list of samples with a unit."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass
class Result:
    measure: str
    unit: str
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def fmt(self, value: float) -> str:
        return f"{value:.2f} {self.unit}" if self.unit == "s" else f"{value:g} {self.unit}"

    def as_dict(self) -> dict:
        return {"measure": self.measure, "unit": self.unit, "samples": self.samples,
                "median": self.median}
