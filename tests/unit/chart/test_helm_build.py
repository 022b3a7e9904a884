"""The helm the chart tests run is built from a pinned Go module, like the control plane."""

from __future__ import annotations

from sovereign_dev import chart
from sovereign_dev import build


def test_helm_is_a_pinned_v4_component_of_the_build():
    helm = build.COMPONENTS["helm"]

    assert helm.upstream == "helm.sh/helm/v4"
    assert helm.version.startswith("v4.")
    assert helm.binaries == ["helm"]
    assert (helm.moddir / "go.sum").is_file()


def test_the_built_helm_runs():
    assert "v4." in chart.helm("version", "--short").stdout
