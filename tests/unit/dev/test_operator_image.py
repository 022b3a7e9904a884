"""The operator image built here holds to the Dockerfile: same settings, same package, same rules.

No engine builds the Dockerfile on this machine, so ``sovereign_dev.images`` writes its image
itself; this test reads the Dockerfile and the built archive and compares what a user of the image
gets: the runtime settings of the final stage (env, user, entry point, command, labels), the
project installed (not editable, compiled) in the virtual environment the build stage creates,
the reference the operator renders for its loader init containers, no test harness inside, and
nothing written when it runs. The archive comes from the cache ``make setup`` fills (built on
first use otherwise: minutes, root and network needed).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from sovereign.render.facts import DEFAULT_OPERATOR_IMAGE
from sovereign_dev import dockerfile, images, oci
from sovereign_dev.chart import REPO_ROOT

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="building and running the image's root filesystem "
                                                         "needs root (mmdebstrap, chroot)")


@pytest.fixture(scope="module")
def image() -> oci.ImageContents:
    return oci.read_image(images.ensure("operator", progress=False))


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("operator-rootfs")
    root.chmod(0o755)  # as the root of a container is; pytest makes its directories private
    oci.extract_rootfs(images.ensure("operator", progress=False), root)
    return root


@pytest.fixture(scope="module")
def settings(image: oci.ImageContents) -> dockerfile.Runtime:
    base = oci.read_image(images.ensure("base", progress=False)).config["config"]
    return dockerfile.runtime(base_env=dict(item.split("=", 1) for item in base["Env"]))


def in_image(rootfs: Path, *command: str, env: dict[str, str], user: str | None = None) -> subprocess.CompletedProcess:
    prefix = ["chroot", *([f"--userspec={user}"] if user else []), str(rootfs)]
    return subprocess.run([*prefix, *command], env=env, capture_output=True, text=True, timeout=120)


def image_env(image: oci.ImageContents) -> dict[str, str]:
    return dict(item.split("=", 1) for item in image.config["config"]["Env"])


def test_it_imports_as_the_image_the_operator_renders_for_its_model_loader(image):
    assert image.reference == DEFAULT_OPERATOR_IMAGE == images.OPERATOR_IMAGE


def test_its_runtime_settings_are_the_dockerfile_final_stage(image, settings):
    config = image.config["config"]
    assert image_env(image) == settings.env
    assert (config["User"], config["Entrypoint"], config["Cmd"]) == (
        settings.user, list(settings.entrypoint), list(settings.cmd))
    assert config.get("WorkingDir", "") == settings.working_dir
    assert settings.labels.items() <= config["Labels"].items()
    # What the Dockerfile says, spelled out, so a change to either side shows here.
    assert config["User"] == "65532:65532" and config["Entrypoint"] == ["sovereign"] and config["Cmd"] == ["--help"]
    env = image_env(image)
    assert env["PATH"].split(":")[0] == f"{settings.venv}/bin" == "/opt/sovereign/bin"
    assert (env["PYTHONDONTWRITEBYTECODE"], env["PYTHONUNBUFFERED"], env["HOME"]) == ("1", "1", "/tmp")
    assert config["Labels"]["org.opencontainers.image.title"] == "sovereign-stack-operator"


def test_the_package_is_installed_not_linked_and_equals_the_repository(rootfs, settings):
    site = next((rootfs / settings.venv.lstrip("/")).glob("lib/python3*/site-packages"))
    installed = site / "sovereign"
    repository = REPO_ROOT / "operator" / "sovereign"
    sources = sorted(p.relative_to(repository) for p in repository.rglob("*")
                     if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")
    for relative in sources:
        copy = installed / relative
        assert copy.is_file() and not copy.is_symlink(), f"{relative} is not installed as a file"
        assert hashlib.sha256(copy.read_bytes()).digest() == hashlib.sha256((repository / relative).read_bytes()).digest(), (
            f"{relative} differs from the repository: rebuild with python -m sovereign_dev.images")
    (dist_info,) = site.glob("sovereign_stack_operator-*.dist-info")
    assert not (dist_info / "direct_url.json").exists() or '"editable": true' not in (dist_info / "direct_url.json").read_text()
    assert not list(site.glob("__editable__*")) and not list(site.glob("*.egg-link"))
    # The bytecode is compiled at build time, for every module of the package.
    missing = [p for p in installed.rglob("*.py") if not list((p.parent / "__pycache__").glob(f"{p.stem}.*.pyc"))]
    assert not missing


def test_no_test_harness_is_inside(rootfs, settings):
    site = next((rootfs / settings.venv.lstrip("/")).glob("lib/python3*/site-packages"))
    assert not [p for p in rootfs.rglob("sovereign_dev")], "the local-cloud harness reached the image"
    assert not (site / "pytest").exists() and not (site / "_pytest").exists()
    # No path file puts a checkout on sys.path, and the project registers no pytest plugin.
    assert not [p.name for p in site.glob("*.pth") if "operator" in p.read_text()]
    (dist_info,) = site.glob("sovereign_stack_operator-*.dist-info")
    assert "pytest11" not in (dist_info / "entry_points.txt").read_text()


def test_it_runs_as_its_user_and_writes_nothing_at_run_time(rootfs, image):
    before = {p: p.stat().st_mtime_ns for p in rootfs.rglob("*") if not p.is_symlink()}
    env = image_env(image)
    # Run as root without PYTHONDONTWRITEBYTECODE: Python would write any bytecode it lacked.
    writable = {key: value for key, value in env.items() if key != "PYTHONDONTWRITEBYTECODE"}
    for command in (["sovereign", "--version"], ["sovereign", "fetch-model", "--help"], ["sovereign", "run", "--help"],
                    ["sovereign", "agent", "--help"]):
        result = in_image(rootfs, *command, env=writable)
        assert result.returncode == 0, result.stderr
    after = {p: p.stat().st_mtime_ns for p in rootfs.rglob("*") if not p.is_symlink()}
    assert after == before, sorted(str(p.relative_to(rootfs)) for p in set(after) ^ set(before)
                                   | {p for p in before if after.get(p) != before[p]})
    result = in_image(rootfs, "sovereign", "--version", env=env, user=image.config["config"]["User"])
    assert (result.returncode, result.stdout.strip()) == (0, "sovereign, version 0.1.0"), result.stderr
    result = in_image(rootfs, "python", "-c", "import json, sovereign, sovereign.cli; "
                      "import importlib.util as u; print(json.dumps(u.find_spec('sovereign_dev') is None))",
                      env=env, user=image.config["config"]["User"])
    assert json.loads(result.stdout) is True, result.stderr
