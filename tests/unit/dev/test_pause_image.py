"""The pause image: a static program that waits for a signal, exits 0 on it and reaps orphans."""

from __future__ import annotations

import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest

from sovereign_dev import images, oci

PT_INTERP = 3


def program_header_types(elf: bytes) -> list[int]:
    """The p_type of every program header of a 64-bit little-endian ELF file."""
    assert elf[:5] == b"\x7fELF\x02", "not a 64-bit ELF file"
    (offset,) = struct.unpack_from("<Q", elf, 32)
    size, count = struct.unpack_from("<HH", elf, 54)
    return [struct.unpack_from("<I", elf, offset + n * size)[0] for n in range(count)]


@pytest.fixture(scope="module")
def pause(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pause-rootfs")
    oci.extract_rootfs(images.ensure("pause", progress=False), root)
    return root / "pause"


def test_the_image_is_the_static_pause_program_run_as_a_non_root_user():
    image = oci.read_image(images.ensure("pause", progress=False))
    assert image.reference == images.PAUSE_IMAGE
    assert image.config["config"]["Entrypoint"] == ["/pause"]
    assert image.config["config"]["User"] == "65535:65535"


def test_the_program_needs_no_libc_and_reports_its_version(pause: Path):
    assert PT_INTERP not in program_header_types(pause.read_bytes()), "it names a dynamic loader: not static"
    result = subprocess.run([str(pause), "--version"], capture_output=True, text=True, check=True)
    assert result.stdout == f"sovereign-pause {images.PAUSE_VERSION}\n"


def test_it_waits_until_terminated_then_exits_zero(pause: Path):
    process = subprocess.Popen([str(pause)])
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=0.5)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        process.kill()


def test_it_reaps_a_child_that_exits_so_no_zombie_stays(pause: Path):
    # The shell starts a short sleep, then becomes the pause program: the sleep is its child.
    process = subprocess.Popen(["sh", "-c", f"sleep 0.3 & echo $!; exec {pause}"], stdout=subprocess.PIPE, text=True)
    try:
        child = int(process.stdout.readline())
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{child}").exists(), Path(f"/proc/{child}/stat").read_text()
        assert process.poll() is None
    finally:
        process.kill()
        process.wait()
