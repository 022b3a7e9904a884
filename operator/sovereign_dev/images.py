"""The container images the real node runs, built on this machine (no registry, no Docker engine).

Each image is written by ``sovereign_dev.oci`` as an OCI archive and cached as
``~/.cache/sovereign-stack/images/<name>-<content key>.tar``, the key hashing everything the image
is made of (sources, package lists, the archive writer), so an unchanged image is never rebuilt
and a changed one never served stale. The images:

``pause``
    The pods' sandbox image (containerd's ``sandbox_image``): a static C program of ours
    (``images_src/pause.c``) that sleeps until signalled and reaps orphans.

Usage, from the real-node harness::

    from sovereign_dev import images, oci
    archive = images.ensure("pause")                       # builds once, then cached
    oci.import_image(archive, address="/run/.../containerd.sock")
    images.PAUSE_IMAGE                                     # the reference it imports as

``python -m sovereign_dev.images [name ...]`` builds them all (the set-up step of ``make setup``).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sovereign_dev import build, oci

SOURCES = Path(__file__).with_name("images_src")

#: Version of the pause program; part of its reference, so a containerd config can name it.
PAUSE_VERSION = "1.0"
#: The sandbox image's reference: containerd's ``sandbox_image`` must name exactly this.
PAUSE_IMAGE = f"sovereign.local/pause:{PAUSE_VERSION}"
LABELS_SOURCE = "https://github.com/sovereign-ai/sovereign-stack-operator"


class ImageBuildError(RuntimeError):
    """An image could not be built; the message names the image, the step and its output."""


@dataclass(frozen=True)
class Image:
    """One image of the project: its name, the reference it imports as, and how it is built."""

    name: str
    reference: str
    #: Files and strings the image is made of; their hash is the cache key.
    inputs: Callable[[], list[bytes]]
    #: Writes the archive to the given path.
    write: Callable[[Path], None]

    def key(self) -> str:
        digest = hashlib.sha256()
        for part in [Path(oci.__file__).read_bytes(), self.reference.encode(), *self.inputs()]:
            digest.update(hashlib.sha256(part).digest())
        return digest.hexdigest()[:16]


def cache_dir() -> Path:
    return build.cache_root() / "images"


def archive_path(name: str) -> Path:
    image = IMAGES[name]
    return cache_dir() / f"{name}-{image.key()}.tar"


def ensure(name: str, *, progress: bool = True) -> Path:
    """The archive of image ``name``, built first when the cache has none for its content."""
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
        IMAGES[name].write(target)
        _say(f"built image {name} ({IMAGES[name].reference}) in {time.monotonic() - started:.0f}s -> {target}",
             enabled=progress)
    return target


def import_images(*, address: str, names: list[str] | None = None, namespace: str = "k8s.io") -> dict[str, str]:
    """Build (when needed) and import the named images (all by default); name -> reference."""
    return {name: oci.import_image(ensure(name), address=address, namespace=namespace)
            for name in (names or list(IMAGES))}


# --------------------------------------------------------------------------------------- pause

def _pause_inputs() -> list[bytes]:
    return [(SOURCES / "pause.c").read_bytes(), _gcc_version().encode()]


def _gcc_version() -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise ImageBuildError("building the pause image needs gcc: install Debian's gcc and libc6-dev")
    return subprocess.run([gcc, "--version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]


def _write_pause(archive: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="sovereign-pause-") as scratch:
        binary = Path(scratch) / "pause"
        _run(["gcc", "-static", "-Os", "-s", "-Wall", "-Werror", f'-DSOVEREIGN_PAUSE_VERSION="{PAUSE_VERSION}"',
              "-o", str(binary), str(SOURCES / "pause.c")], step="compiling pause.c (gcc -static)", image="pause")
        layer = oci.layer_from_files({"pause": (binary.read_bytes(), 0o755)},
                                     created_by="gcc -static images_src/pause.c")
        oci.write_image(archive=archive, reference=PAUSE_IMAGE, layers=[layer], config=oci.ImageConfig(
            entrypoint=("/pause",),
            # The same id as the upstream pause image's: no passwd entry is needed for a numeric one.
            user="65535:65535",
            labels=_labels(title="sovereign-pause", description="Pod sandbox process of the local real node"),
        ))


# --------------------------------------------------------------------------------------- helpers

def _labels(*, title: str, description: str) -> dict[str, str]:
    return {
        "org.opencontainers.image.title": title,
        "org.opencontainers.image.description": description,
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.source": LABELS_SOURCE,
    }


def _run(command: list[str], *, step: str, image: str, cwd: Path | None = None,
         env: dict[str, str] | None = None) -> None:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()[-40:]
        raise ImageBuildError(f"image {image}: {step} failed (exit {result.returncode}):\n" + "\n".join(output))


def _say(message: str, *, enabled: bool) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)


IMAGES: dict[str, Image] = {
    image.name: image
    for image in (
        Image("pause", PAUSE_IMAGE, _pause_inputs, _write_pause),
    )
}


def main(argv: list[str] | None = None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or list(IMAGES)
    unknown = [n for n in names if n not in IMAGES]
    if unknown:
        print(f"unknown image(s) {unknown}; choose from {sorted(IMAGES)}", file=sys.stderr)
        return 2
    try:
        for name in names:
            print(f"{name}: {ensure(name)} ({IMAGES[name].reference})")
    except (ImageBuildError, oci.ImageError) as err:
        print(str(err), file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
