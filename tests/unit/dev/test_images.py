"""The image cache and the Dockerfile reader behind ``python -m sovereign_dev.images``."""

from __future__ import annotations

import os
import textwrap

import pytest

from sovereign_dev import dockerfile, images


def test_archives_are_cached_outside_the_repo_by_content_and_old_ones_pruned(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SOVEREIGN_CACHE_DIR", str(tmp_path))
    target = images.archive_path("pause")
    assert target.parent == tmp_path / "images" and target.name == f"pause-{images.IMAGES['pause'].key()}.tar"
    target.parent.mkdir(parents=True)
    older = [target.parent / f"pause-{n:016x}.tar" for n in range(1, 5)]
    for age, path in enumerate(older):
        path.write_bytes(b"old")
        os.utime(path, (1_000_000 - age, 1_000_000 - age))
    unrelated = target.parent / "pause-sidecar-0000000000000001.tar"
    unrelated.write_bytes(b"another image")

    assert images.main(["pause"]) == 0
    assert f"pause: {target} ({images.PAUSE_IMAGE})" in capsys.readouterr().out
    assert target.is_file()
    # The two newest older archives stay for other checkouts; the rest go.
    assert [p.exists() for p in older] == [True, True, False, False]
    assert unrelated.exists()


def test_an_unknown_image_is_refused_with_the_known_names(capsys):
    assert images.main(["operater"]) == 2
    err = capsys.readouterr().err
    assert f"unknown image(s) ['operater']; choose from {sorted(images.IMAGES)}" in err
    assert {"base", "chat-client", "operator", "pause"} <= set(images.IMAGES)
    with pytest.raises(images.ImageBuildError, match="choose from"):
        images.ensure("operater")


def test_the_dockerfile_runtime_expands_env_and_reads_labels_and_the_venv(tmp_path):
    path = tmp_path / "Dockerfile"
    path.write_text(textwrap.dedent("""\
        ARG BASE=debian:bookworm-slim
        FROM ${BASE} AS build
        RUN python3 -m venv /opt/app && /opt/app/bin/pip install .
        FROM ${BASE}
        LABEL a="one two" \\
              b=three
        ENV PATH=/opt/app/bin:$PATH \\
            HOME=/tmp
        USER 1000:1000
        WORKDIR /srv
        ENTRYPOINT ["app", "--flag"]
        CMD ["serve"]
    """))
    assert [stage.base for stage in dockerfile.stages(path=path)] == ["debian:bookworm-slim"] * 2
    runtime = dockerfile.runtime(base_env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, path=path)
    assert runtime == dockerfile.Runtime(
        env={"PATH": "/opt/app/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp"}, user="1000:1000",
        entrypoint=("app", "--flag"), cmd=("serve",), labels={"a": "one two", "b": "three"}, working_dir="/srv",
        venv="/opt/app")


def test_a_dockerfile_in_shell_form_is_refused_naming_the_instruction(tmp_path):
    path = tmp_path / "Dockerfile"
    path.write_text("FROM x AS build\nRUN python -m venv /v\nFROM x\nUSER 1\nENTRYPOINT app --serve\nCMD []\n")
    with pytest.raises(dockerfile.DockerfileError, match=r'ENTRYPOINT app --serve: use the exec form'):
        dockerfile.runtime(base_env={}, path=path)
