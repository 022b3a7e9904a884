"""`sovereign dev up` refuses a fleet it cannot simulate before it starts anything."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from sovereign.cli import main


def test_dev_up_refuses_a_region_the_fleet_does_not_simulate(tmp_path: Path):
    result = CliRunner().invoke(main, ["dev", "up", "--regions", "me-central-1,mars-1",
                                       "--workdir", str(tmp_path / "dev")])

    assert result.exit_code == 2
    assert ("Invalid value for --regions: mars-1: the simulated fleet has regions "
            "me-central-1, eu-west-1; give one or more of them, in-country first") in result.output
    assert not (tmp_path / "dev").exists()


def test_dev_up_refuses_more_than_64_nodes_per_region(tmp_path: Path):
    result = CliRunner().invoke(main, ["dev", "up", "--nodes", "65",
                                       "--workdir", str(tmp_path / "dev")])

    assert result.exit_code == 2
    assert "--nodes" in result.output and "1<=x<=64" in result.output
