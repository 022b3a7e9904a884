"""The Dockerfile's rules, read from the file (``sovereign_dev.dockerfile``).

The final stage is what runs in the cluster, so it is held to: a slim base, a numeric non-root
user (runAsNonRoot can only be verified for a numeric one), no compiler or package installs, and
``sovereign`` as the entry point serving every role of the chart (run, agent, fetch-model).
``tests/unit/dev/test_operator_image.py`` holds the image built locally to the same file.
"""

from __future__ import annotations

import re
import shlex
import tomllib

from click.testing import CliRunner

from sovereign.cli import main
from sovereign_dev.chart import REPO_ROOT
from sovereign_dev.dockerfile import stages

BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|cc|clang|make|build-essential|cmake|rustc|cargo|golang|"
                         r"python3?-dev|libc6?-dev)\b")


def test_the_final_stage_runs_on_a_slim_base_as_a_numeric_non_root_user():
    final = stages()[-1]
    assert re.search(r"[:-]slim\b", final.base), final.base
    (user,) = final.all("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER {user} must be a numeric non-root id"
    assert not gid or (gid.isdigit() and int(gid) != 0)


def test_the_final_stage_installs_nothing_and_has_no_build_tools():
    final = stages()[-1]
    runs = final.all("RUN")
    assert not [run for run in runs if BUILD_TOOLS.search(run)]
    assert not [run for run in runs if re.search(r"\b(apt-get|apk|pip) +install\b", run)]
    # It takes the installed environment from the build stage instead.
    build = stages()[0]
    assert any(f"--from={build.name}" in copy for copy in final.all("COPY"))


def test_the_image_writes_no_bytecode_at_run_time_so_its_root_can_be_read_only():
    env = " ".join(stages()[-1].all("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env


def test_the_entry_point_is_the_sovereign_command_with_every_role_of_the_chart():
    (entrypoint,) = stages()[-1].all("ENTRYPOINT")
    assert shlex.split(entrypoint.strip("[]").replace(",", " ")) == ["sovereign"]
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["sovereign"] == "sovereign.cli:main"
    for role in ("run", "agent", "fetch-model"):
        result = CliRunner().invoke(main, [role, "--help"])
        assert result.exit_code == 0, f"sovereign {role}: {result.output}"


def test_the_build_context_is_only_what_the_image_needs():
    rules = [line for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
             if line and not line.startswith("#")]
    # Everything is excluded first, then only the package's sources are let back in.
    assert rules[0] == "*"
    assert {rule for rule in rules if rule.startswith("!")} == {"!pyproject.toml", "!README.md", "!operator/"}
