"""The container images the real node runs, built on this machine (no registry, no Docker engine).

Each image is written by ``sovereign_dev.oci`` as an OCI archive and cached as
``~/.cache/sovereign-stack/images/<name>-<content key>.tar``, the key hashing everything the image
is made of (sources, package lists, this module and the archive writer, the base's key), so an
unchanged image is never rebuilt and a changed one never served stale. The images:

``pause`` (:data:`PAUSE_IMAGE`)
    The pods' sandbox image (containerd's ``sandbox_image``): a static C program of ours
    (``images_src/pause.c``) that sleeps until signalled and reaps orphans.
``base`` (:data:`BASE_IMAGE`)
    A Debian bookworm root filesystem made by Debian's ``mmdebstrap`` (minbase plus
    ``BASE_PACKAGES``: Python and the C/C++ runtimes the llama.cpp engine links), cached by its
    package list. The other images are layers on top of it: ``oci.write_image(base=
    images.ensure("base"), ...)``, with ``oci.extract_rootfs`` to build inside it.
``operator`` (:data:`OPERATOR_IMAGE`)
    The image of the repository's ``Dockerfile``, under the reference the chart and the
    renderer use by default (so the loader init containers, ``sovereign fetch-model``, find it
    with ``IfNotPresent``): the project installed (not editable, bytecode compiled) into the
    virtual environment the Dockerfile names, and the final stage's ENV, USER, ENTRYPOINT, CMD
    and LABELs, read from the Dockerfile itself (``sovereign_dev.dockerfile``).
``llama-server`` (:data:`LLAMA_SERVER_IMAGE`)
    llama.cpp's server on the base, tagged exactly as the operator's default image for engine
    ``llama-cpp`` (``sovereign.api.engines.LLAMA_CPP_IMAGE``, the upstream server image's name),
    so a rendered CPU model runs on the local node with ``IfNotPresent``. Laid out as upstream's
    image: ``/app/llama-server`` as entry point, ``LLAMA_ARG_HOST=0.0.0.0``. The binary is
    ``sovereign_dev.build``'s (built from the pinned llama.cpp source; needs only glibc).
``chat-client`` (:data:`CHAT_CLIENT_IMAGE`)
    The sample application (``apps/chat_client.py``): asks its model by logical name, serves
    the answer on ``/ask``. Non-root, writes nothing.

Usage, from the real-node harness::

    from sovereign_dev import images
    images.import_images(address="/run/.../containerd.sock")   # build what is missing, import all
    images.PAUSE_IMAGE                                          # for containerd's sandbox_image

``python -m sovereign_dev.images [name ...]`` builds them (the ``images`` step of ``make setup``),
showing progress. Building the base and the operator needs root (mmdebstrap, chroot) or user
namespaces, and the Debian mirror and PyPI.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sovereign import __version__
from sovereign.api.engines import LLAMA_CPP_BUILD, LLAMA_CPP_COMMIT, LLAMA_CPP_IMAGE
from sovereign.render.facts import DEFAULT_OPERATOR_IMAGE
from sovereign.render.inference import LLAMA_SERVER
from sovereign_dev import build, dockerfile, oci

SOURCES = Path(__file__).with_name("images_src")
REPO_ROOT = Path(__file__).resolve().parents[2]

#: Version of the pause program; part of its reference, so a containerd config can name it.
PAUSE_VERSION = "1.0"
#: The sandbox image's reference: containerd's ``sandbox_image`` must name exactly this.
PAUSE_IMAGE = f"sovereign.local/pause:{PAUSE_VERSION}"
BASE_IMAGE = "sovereign.local/base:bookworm"
#: The operator image goes by the reference the operator renders for its loader init containers.
OPERATOR_IMAGE = DEFAULT_OPERATOR_IMAGE
CHAT_CLIENT_IMAGE = f"sovereign.local/chat-client:{__version__}"
#: The CPU engine goes by the reference the operator renders for engine llama-cpp by default.
LLAMA_SERVER_IMAGE = LLAMA_CPP_IMAGE

#: Debian suite and mirrors of the base root filesystem.
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
#: Packages of the base beyond minbase: Python for the operator and the client, TLS roots for
#: S3 endpoints, and the OpenMP and C++ runtimes llama.cpp's llama-server links against.
BASE_PACKAGES = ("python3", "ca-certificates", "libgomp1", "libstdc++6")
#: Documentation, manuals and translations are left out of the base (copyright files stay).
_DPKG_OPTIONS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
)
#: The PATH of a Debian root filesystem, which an image config must spell out.
DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: The "nonroot" id of distroless images, as the Dockerfile uses: no passwd entry needed.
NONROOT = "65532:65532"
CHAT_CLIENT_DIR = "/opt/chat-client"
LABELS_SOURCE = "https://github.com/sovereign-ai/sovereign-stack-operator"


class ImageBuildError(RuntimeError):
    """An image could not be built; the message names the image, the step and its output."""


Report = Callable[[str], None]


@dataclass(frozen=True)
class Image:
    """One image of the project: its name, the reference it imports as, and how it is built."""

    name: str
    reference: str
    #: What the image is made of (file contents, recipes); their hash is the cache key.
    inputs: Callable[[], list[bytes]]
    #: Writes the archive to the given path, saying its steps through ``report``.
    write: Callable[[Path, Report], None]

    def key(self) -> str:
        digest = hashlib.sha256()
        # The writer and the recipes themselves are inputs of every image; mmdebstrap's slow
        # root filesystem is cached apart, by its package list only (``rootfs_path``).
        recipes = [Path(oci.__file__).read_bytes(), Path(__file__).read_bytes()]
        for part in [*recipes, self.reference.encode(), *self.inputs()]:
            digest.update(hashlib.sha256(part).digest())
        return digest.hexdigest()[:16]


def cache_dir() -> Path:
    return build.cache_root() / "images"


def archive_path(name: str) -> Path:
    """Where image ``name``'s archive is cached (whether or not it is built yet)."""
    return cache_dir() / f"{name}-{IMAGES[name].key()}.tar"


def ensure(name: str, *, progress: bool = True) -> Path:
    """The archive of image ``name``, built first (with its base) when the cache has none for its content."""
    if name not in IMAGES:
        raise ImageBuildError(f"unknown image {name!r}; choose from {sorted(IMAGES)}")
    target = archive_path(name)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Two test sessions, or a test and `dev up`, may ask at once: one builds, the other waits.
    with build._locked(target.parent / f".{name}.lock"):
        if target.is_file():
            return target
        started = time.monotonic()
        with _progress(name, enabled=progress) as report:
            IMAGES[name].write(target, report)
        _say(f"built image {name} ({IMAGES[name].reference}) in {time.monotonic() - started:.0f}s -> {target}",
             enabled=progress)
        _prune(name, keep=target)
    return target


#: Archives kept per image besides the newest: another checkout (a branch, a worktree) may still
#: use an older content key; beyond that they only fill the disk (an operator image is ~100 MB).
KEEP_OLDER = 2


def _prune(name: str, *, keep: Path) -> None:
    pattern = re.compile(rf"{re.escape(name)}-[0-9a-f]{{16}}\.tar")
    older = sorted((p for p in cache_dir().iterdir() if pattern.fullmatch(p.name) and p != keep),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in older[KEEP_OLDER:]:
        stale.unlink(missing_ok=True)


def import_images(*, address: str, names: list[str] | None = None, namespace: str = "k8s.io",
                  progress: bool = True) -> dict[str, str]:
    """Build (when needed) and import the named images (all by default) into containerd; name -> reference."""
    return {name: oci.import_image(ensure(name, progress=progress), address=address, namespace=namespace)
            for name in (names or list(IMAGES))}


# --------------------------------------------------------------------------------------- pause

def _pause_inputs() -> list[bytes]:
    return [(SOURCES / "pause.c").read_bytes(), _gcc_version().encode()]


def _gcc_version() -> str:
    if shutil.which("gcc") is None:
        raise ImageBuildError("building the pause image needs gcc: apt-get install gcc libc6-dev (make setup does)")
    return subprocess.run(["gcc", "--version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]


def _write_pause(archive: Path, report: Report) -> None:
    with tempfile.TemporaryDirectory(prefix="sovereign-pause-") as scratch:
        binary = Path(scratch) / "pause"
        _run(["gcc", "-static", "-Os", "-s", "-Wall", "-Werror", f'-DSOVEREIGN_PAUSE_VERSION="{PAUSE_VERSION}"',
              "-o", str(binary), str(SOURCES / "pause.c")], step="gcc -static pause.c", image="pause", report=report)
        layer = oci.layer_from_files({"pause": (binary.read_bytes(), 0o755)},
                                     created_by="gcc -static images_src/pause.c")
        report("writing the archive")
        oci.write_image(archive=archive, reference=PAUSE_IMAGE, layers=[layer], config=oci.ImageConfig(
            entrypoint=("/pause",),
            # The same id as the upstream pause image's: no passwd entry is needed for a numeric one.
            user="65535:65535",
            labels=_labels(title="sovereign-pause", description="Pod sandbox process of the local real node"),
        ))


# --------------------------------------------------------------------------------------- base

def _base_recipe(output: str) -> list[str]:
    return ["mmdebstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
            *(f"--dpkgopt={option}" for option in _DPKG_OPTIONS), DEBIAN_SUITE, output, *DEBIAN_MIRRORS]


def rootfs_path() -> Path:
    """Where mmdebstrap's root filesystem is cached: keyed by its recipe (suite, mirrors, packages) only."""
    key = hashlib.sha256(" ".join(_base_recipe("-")).encode()).hexdigest()[:16]
    return cache_dir() / f"rootfs-{DEBIAN_SUITE}-{key}.tar"


def _base_inputs() -> list[bytes]:
    return [rootfs_path().name.encode()]


#: The host's resolver and name, which mmdebstrap copies in, are not the image's.
_HOST_FILES = {"etc/resolv.conf", "etc/hostname"}


def _ensure_rootfs(report: Report) -> Path:
    """mmdebstrap's tarball of the base, made once per recipe (the image's layer is rewritten from it)."""
    target = rootfs_path()
    if target.is_file():
        return target
    if shutil.which("mmdebstrap") is None:
        raise ImageBuildError("building the base image needs Debian's mmdebstrap: apt-get install mmdebstrap "
                              "(make setup does)")
    with build._locked(target.parent / ".rootfs.lock"):
        if not target.is_file():
            # mmdebstrap picks its output format by the name: keep ".tar" at the end.
            staging = target.with_name(f".partial-{target.name}")
            _run(_base_recipe(str(staging)), step=f"mmdebstrap {DEBIAN_SUITE}", image="base", report=report)
            staging.replace(target)
    return target


def _write_base(archive: Path, report: Report) -> None:
    rootfs = _ensure_rootfs(report)
    report("writing the archive")
    # The runtime mounts its own /dev.
    layer = oci.layer_from_tar(rootfs, created_by=f"mmdebstrap --variant=minbase {DEBIAN_SUITE} "
                                                  f"+ {' '.join(BASE_PACKAGES)}",
                               exclude=lambda name: name.startswith("dev/") or name in _HOST_FILES)
    oci.write_image(archive=archive, reference=BASE_IMAGE, layers=[layer], config=oci.ImageConfig(
        env={"PATH": DEBIAN_PATH, "LANG": "C.UTF-8"},
        labels=_labels(title="sovereign-base",
                       description=f"Debian {DEBIAN_SUITE} minbase with {', '.join(BASE_PACKAGES)}"),
    ))


def _base_env() -> dict[str, str]:
    env = oci.read_image(ensure("base", progress=False)).config["config"].get("Env", [])
    return dict(item.split("=", 1) for item in env)


# --------------------------------------------------------------------------------------- operator

def _package_files() -> list[Path]:
    """What the operator's distribution is built from: pyproject, README and the ``sovereign`` package.

    The harness (``operator/sovereign_dev``) is not among them, so it cannot reach the image.
    """
    package = sorted(p for p in (REPO_ROOT / "operator" / "sovereign").rglob("*")
                     if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")
    return [REPO_ROOT / "pyproject.toml", REPO_ROOT / "README.md", *package]


def _operator_inputs() -> list[bytes]:
    files = [f.relative_to(REPO_ROOT).as_posix().encode() + b"\0" + f.read_bytes() for f in _package_files()]
    return [IMAGES["base"].key().encode(), dockerfile.DOCKERFILE.read_bytes(),
            importlib.metadata.version("pip").encode(), *files]


def _write_operator(archive: Path, report: Report) -> None:
    base = ensure("base", progress=False)
    settings = dockerfile.runtime(base_env=_base_env())
    with tempfile.TemporaryDirectory(prefix=".operator-", dir=archive.parent) as scratch:
        scratch_dir = Path(scratch)
        source, wheels, rootfs = scratch_dir / "src", scratch_dir / "wheels", scratch_dir / "rootfs"
        for file in _package_files():
            (source / file.relative_to(REPO_ROOT)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, source / file.relative_to(REPO_ROOT))
        # The wheels are fetched and built on the host (PyPI, the build backend); the install into
        # the image's own Python then runs offline, inside the image's root filesystem.
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
        _run([*pip, "wheel", "--wheel-dir", str(wheels), str(source)], step="pip wheel (the project and its "
             "dependencies)", image="operator", report=report)
        _run([*pip, "download", "--no-deps", "--dest", str(wheels), f"pip=={importlib.metadata.version('pip')}"],
             step="pip download pip", image="operator", report=report)
        report("unpacking the base")
        oci.extract_rootfs(base, rootfs)
        shutil.copytree(wheels, rootfs / "tmp" / "wheels")
        (pip_wheel,) = (rootfs / "tmp" / "wheels").glob("pip-*.whl")
        venv = settings.venv
        # SOURCE_DATE_EPOCH makes pip compile hash-checked bytecode, valid whatever the files'
        # times in the layer (zeroed); with PYTHONDONTWRITEBYTECODE the image never writes any.
        env = {"PATH": DEBIAN_PATH, "HOME": "/tmp", "LANG": "C.UTF-8", "SOURCE_DATE_EPOCH": "0",
               "PIP_NO_CACHE_DIR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        _run([*_chroot(rootfs), "/usr/bin/python3", "-m", "venv", "--without-pip", venv], env=env,
             step=f"python3 -m venv {venv}", image="operator", report=report)
        _run([*_chroot(rootfs), f"{venv}/bin/python", f"/tmp/wheels/{pip_wheel.name}/pip", "install", "--no-index",
              "--find-links", "/tmp/wheels", "sovereign-stack-operator"], env=env,
             step="pip install the project (not editable)", image="operator", report=report)
        _run([*_chroot(rootfs), f"{venv}/bin/sovereign", "--version"], env={**env, "PYTHONDONTWRITEBYTECODE": "1"},
             step="sovereign --version", image="operator", report=report)
        report("writing the archive")
        layer = oci.layer_from_directory(rootfs / venv.lstrip("/"), prefix=venv,
                                         created_by=f"python3 -m venv {venv} && pip install sovereign-stack-operator")
        oci.write_image(archive=archive, reference=OPERATOR_IMAGE, base=base, layers=[layer], config=oci.ImageConfig(
            env=settings.env, user=settings.user, entrypoint=settings.entrypoint, cmd=settings.cmd,
            working_dir=settings.working_dir, labels=settings.labels,
        ))


def _chroot(root: Path) -> list[str]:
    """The command prefix that runs a program inside ``root``: chroot as root, else a user namespace."""
    if os.geteuid() == 0:
        return ["chroot", str(root)]
    return ["unshare", "--map-root-user", f"--root={root}"]


# --------------------------------------------------------------------------------------- llama-server

def _llama_server_inputs() -> list[bytes]:
    # The build's cache key hashes the sdist, its checksum and every CMake flag: a new build of
    # llama-server is a new image, without reading (or first building) the binary to know it.
    return [IMAGES["base"].key().encode(), build.cached_dir(build.COMPONENTS["llama-server"]).name.encode()]


def _write_llama_server(archive: Path, report: Report) -> None:
    base = ensure("base", progress=False)
    report("building llama-server (cached after the first build)")
    component = build.COMPONENTS["llama-server"]
    binary = build.ensure("llama-server", progress=False) / "llama-server"
    report("writing the archive")
    layer = oci.layer_from_files({LLAMA_SERVER: (binary.read_bytes(), 0o755)},
                                 created_by=f"llama-server {component.version} from {component.package} "
                                            f"{component.package_version} (sovereign_dev.build)")
    labels = _labels(title="llama.cpp server",
                     description=f"llama.cpp's llama-server b{LLAMA_CPP_BUILD}, built from the llama.cpp source "
                                 f"of {component.package} {component.package_version}")
    labels.update({"org.opencontainers.image.version": f"b{LLAMA_CPP_BUILD}",
                   "org.opencontainers.image.revision": LLAMA_CPP_COMMIT,
                   "org.opencontainers.image.licenses": "MIT"})
    oci.write_image(archive=archive, reference=LLAMA_SERVER_IMAGE, base=base, layers=[layer], config=oci.ImageConfig(
        entrypoint=(LLAMA_SERVER,), env={"LLAMA_ARG_HOST": "0.0.0.0"}, working_dir="/app", labels=labels,
    ))


# --------------------------------------------------------------------------------------- chat client

def _client_source() -> Path:
    return Path(__file__).with_name("apps") / "chat_client.py"


def _client_inputs() -> list[bytes]:
    return [IMAGES["base"].key().encode(), _client_source().read_bytes()]


def _write_client(archive: Path, report: Report) -> None:
    base = ensure("base", progress=False)
    report("writing the archive")
    layer = oci.layer_from_files({f"{CHAT_CLIENT_DIR}/chat_client.py": _client_source().read_bytes()},
                                 created_by="sovereign_dev/apps/chat_client.py")
    oci.write_image(archive=archive, reference=CHAT_CLIENT_IMAGE, base=base, layers=[layer], config=oci.ImageConfig(
        entrypoint=("python3", f"{CHAT_CLIENT_DIR}/chat_client.py"),
        env={"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "HOME": "/tmp", "PORT": "8080"},
        user=NONROOT, working_dir=CHAT_CLIENT_DIR,
        labels=_labels(title="sovereign-chat-client",
                       description="Sample application: asks its model by logical name, serves /ask"),
    ))


# --------------------------------------------------------------------------------------- helpers

def _labels(*, title: str, description: str) -> dict[str, str]:
    return {
        "org.opencontainers.image.title": title,
        "org.opencontainers.image.description": description,
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.source": LABELS_SOURCE,
    }


def _run(command: list[str], *, step: str, image: str, report: Report, env: dict[str, str] | None = None) -> None:
    """Run one build step, its output shown as the progress line and kept for the error."""
    report(step)
    lines: list[str] = []
    try:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   errors="replace")
    except FileNotFoundError as err:
        raise ImageBuildError(f"image {image}: {step}: {command[0]} is not installed") from err
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line.rstrip())
        del lines[:-60]
        report(f"{step}: {line.strip()[-70:]}")
    if process.wait() != 0:
        tail = "\n".join(lines[-40:])
        raise ImageBuildError(f"image {image}: {step} failed (exit {process.returncode}): "
                              f"{' '.join(command)}\n{tail}")


@contextlib.contextmanager
def _progress(name: str, *, enabled: bool) -> Iterator[Report]:
    """A live line per image build (spinner, step, elapsed time); plain step lines when not on a terminal."""
    if not enabled:
        yield lambda step: None
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        last: list[str] = []

        def plain(step: str) -> None:
            # Only the steps, not every output line, when the output is a log.
            head = step.split(": ", 1)[0]
            if last[-1:] != [head]:
                last.append(head)
                console.print(f"image {name}: {head}")

        yield plain
        return
    columns = (SpinnerColumn(), TextColumn(f"[bold]image {name}"), TimeElapsedColumn(),
               TextColumn("[dim]{task.fields[step]}"))
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(name, total=None, step="")
        yield lambda step: bar.update(task, step=step)


def _say(message: str, *, enabled: bool) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)


IMAGES: dict[str, Image] = {
    image.name: image
    for image in (
        Image("pause", PAUSE_IMAGE, _pause_inputs, _write_pause),
        Image("base", BASE_IMAGE, _base_inputs, _write_base),
        Image("operator", OPERATOR_IMAGE, _operator_inputs, _write_operator),
        Image("chat-client", CHAT_CLIENT_IMAGE, _client_inputs, _write_client),
        Image("llama-server", LLAMA_SERVER_IMAGE, _llama_server_inputs, _write_llama_server),
    )
}


def main(argv: list[str] | None = None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or list(IMAGES)
    unknown = [n for n in names if n not in IMAGES]
    if unknown:
        print(f"unknown image(s) {unknown}; choose from {sorted(IMAGES)}", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        for name in names:
            print(f"{name}: {ensure(name)} ({IMAGES[name].reference})")
    except (ImageBuildError, oci.ImageError, dockerfile.DockerfileError) as err:
        print(str(err), file=sys.stderr)
        return 3
    _say(f"images ready in {time.monotonic() - started:.0f}s", enabled=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
