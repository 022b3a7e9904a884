"""The chart's generated files are current: one source each, no drift.

The chart's CRD is the repository's crds/ file, byte for byte; its dashboards are what
``sovereign_dev.dashboards`` builds; the kustomize manifests are what ``helm template`` makes of the
chart. ``python -m sovereign_dev.chart`` regenerates all of them.
"""

from __future__ import annotations

import json
import shutil

from sovereign_dev import chart


def test_the_charts_crd_is_the_generated_crd():
    assert (chart.CHART / "crds" / chart.CRD_SOURCE.name).read_bytes() == chart.CRD_SOURCE.read_bytes()


def test_every_generated_file_is_current():
    stale = chart.differences(chart.generated_files())

    assert [str(path.relative_to(chart.REPO_ROOT)) for path in stale] == [], (
        "run `python -m sovereign_dev.chart` and commit the result")


def test_the_check_names_a_stale_file_and_regeneration_repairs_it(tmp_path, monkeypatch, capsys):
    # A copy of the repository's chart and manifests, with one dashboard edited by hand.
    shutil.copytree(chart.CHART, tmp_path / "charts" / chart.CHART.name)
    shutil.copytree(chart.MANIFESTS, tmp_path / "manifests")
    monkeypatch.setattr(chart, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(chart, "CHART", tmp_path / "charts" / chart.CHART.name)
    monkeypatch.setattr(chart, "MANIFESTS", tmp_path / "manifests")
    edited = chart.CHART / "dashboards" / "sovereign-residency.json"
    edited.write_text("{}\n")

    assert chart.main(["--check"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "out of date: charts/sovereign-stack-operator/dashboards/sovereign-residency.json",
        "run `python -m sovereign_dev.chart` and commit the result"]
    assert chart.main([]) == 0
    assert chart.main(["--check"]) == 0
    assert json.loads(edited.read_text())["title"] == "Residency"


def test_generation_is_deterministic():
    assert chart.generated_files() == chart.generated_files()
