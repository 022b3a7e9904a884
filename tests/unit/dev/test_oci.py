"""The OCI archive writer: same content, same bytes; an archive containerd's importer can read.

The archives are checked with tarfile and hashlib only (not with the writer's own reader), as
an importer sees them: the layout file, the index and its name annotations, blobs named by
their digest, a config whose diff ids are the digests of the uncompressed layers, and layers
whose members are sorted, owned by root and dated 0 unless told otherwise.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from sovereign_dev import oci

REFERENCE = "sovereign.local/test:1.0"
CONFIG = oci.ImageConfig(entrypoint=("/bin/app",), cmd=("--help",), env={"PATH": "/bin", "HOME": "/tmp"},
                         user="65532:65532", working_dir="/srv", labels={"b": "2", "a": "1"})


def make_tree(root: Path, *, mtime: int) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "etc" / "empty").mkdir(parents=True)
    (root / "bin" / "app").write_text("#!/bin/sh\necho hi\n")
    (root / "bin" / "app").chmod(0o755)
    (root / "etc" / "config").write_text("key=value\n")
    os.link(root / "etc" / "config", root / "etc" / "a-hard-link")
    (root / "bin" / "alias").symlink_to("app")
    for path in [*root.rglob("*"), root]:
        os.utime(path, (mtime, mtime), follow_symlinks=False)
    return root


def write(tmp_path: Path, name: str, tree: Path, **kwargs) -> oci.ImageRef:
    layer = oci.layer_from_directory(tree, created_by="test tree", prefix="/opt/app")
    return oci.write_image(archive=tmp_path / name, reference=REFERENCE, config=CONFIG, layers=[layer], **kwargs)


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def blob(files: dict[str, bytes], digest: str) -> bytes:
    data = files[f"blobs/sha256/{digest.removeprefix('sha256:')}"]
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    return data


def test_the_same_content_gives_the_same_bytes_whatever_the_times_and_paths(tmp_path):
    first = write(tmp_path, "first.tar", make_tree(tmp_path / "one", mtime=1_000_000))
    second = write(tmp_path, "second.tar", make_tree(tmp_path / "two", mtime=2_000_000))
    assert first.digest == second.digest
    assert first.archive.read_bytes() == second.archive.read_bytes()


def test_a_changed_file_or_config_changes_the_digest(tmp_path):
    tree = make_tree(tmp_path / "tree", mtime=0)
    before = write(tmp_path, "before.tar", tree)
    (tree / "etc" / "config").write_text("key=other\n")
    changed_file = write(tmp_path, "file.tar", tree)
    changed_config = oci.write_image(
        archive=tmp_path / "config.tar", reference=REFERENCE, config=oci.ImageConfig(user="1000"),
        layers=[oci.layer_from_directory(tree, created_by="test tree", prefix="/opt/app")])
    assert len({before.digest, changed_file.digest, changed_config.digest}) == 3


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_the_archive_is_an_oci_layout_containerd_imports_by_name(tmp_path, compression):
    image = write(tmp_path, "image.tar", make_tree(tmp_path / "tree", mtime=1_700_000_000), compression=compression)
    files = members(image.archive)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files["index.json"])
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    (entry,) = index["manifests"]
    assert entry["annotations"] == {"io.containerd.image.name": REFERENCE,
                                    "org.opencontainers.image.ref.name": REFERENCE}
    assert entry["digest"] == image.digest and entry["platform"] == {"architecture": "amd64", "os": "linux"}
    manifest = json.loads(blob(files, entry["digest"]))
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    config = json.loads(blob(files, manifest["config"]["digest"]))
    assert config["config"] == {
        "Entrypoint": ["/bin/app"], "Cmd": ["--help"], "Env": ["PATH=/bin", "HOME=/tmp"],
        "User": "65532:65532", "WorkingDir": "/srv", "Labels": {"a": "1", "b": "2"},
    }
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == oci.LAYER_MEDIA_TYPES[compression]
    compressed = blob(files, layer["digest"])
    assert layer["size"] == len(compressed)
    plain = gzip.decompress(compressed) if compression == "gzip" else compressed
    assert config["rootfs"] == {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(plain).hexdigest()]}

    with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
        entries = tar.getmembers()
    names = [m.name for m in entries]
    assert names == sorted(names) == [
        "opt", "opt/app", "opt/app/bin", "opt/app/bin/alias", "opt/app/bin/app", "opt/app/etc",
        "opt/app/etc/a-hard-link", "opt/app/etc/config", "opt/app/etc/empty",
    ]
    assert {(m.uid, m.gid, m.mtime, m.uname, m.gname) for m in entries} == {(0, 0, 0, "", "")}
    by_name = {m.name: m for m in entries}
    assert by_name["opt/app/bin/alias"].issym() and by_name["opt/app/bin/alias"].linkname == "app"
    assert by_name["opt/app/bin/app"].mode == 0o755
    # The first of two hard links in the layer's order carries the data; the other points at it.
    assert by_name["opt/app/etc/a-hard-link"].isfile()
    assert by_name["opt/app/etc/config"].islnk()
    assert by_name["opt/app/etc/config"].linkname == "opt/app/etc/a-hard-link"


def test_an_image_read_back_and_unpacked_is_the_tree_it_was_written_from(tmp_path):
    image = write(tmp_path, "image.tar", make_tree(tmp_path / "tree", mtime=0))
    contents = oci.read_image(image.archive)
    assert (contents.reference, contents.digest) == (REFERENCE, image.digest)
    assert contents.config["config"]["User"] == "65532:65532"
    root = tmp_path / "rootfs"
    oci.extract_rootfs(image.archive, root)
    assert (root / "opt/app/etc/config").read_text() == "key=value\n"
    assert os.path.samefile(root / "opt/app/etc/config", root / "opt/app/etc/a-hard-link")
    assert os.readlink(root / "opt/app/bin/alias") == "app"
    assert os.access(root / "opt/app/bin/app", os.X_OK)


def test_a_tar_whose_hard_link_comes_before_its_target_is_resorted_into_a_valid_layer(tmp_path):
    source = tmp_path / "rootfs.tar"
    with tarfile.open(source, "w") as tar:
        for name, kind in [("./usr/bin/perl5.36.0", tarfile.REGTYPE), ("./usr/bin/perl", tarfile.LNKTYPE),
                           ("./dev/null", tarfile.CHRTYPE)]:
            info = tarfile.TarInfo(name)
            info.type, info.uid, info.mtime = kind, 0, 1_700_000_000
            if kind == tarfile.LNKTYPE:
                info.linkname = "./usr/bin/perl5.36.0"
                tar.addfile(info)
            elif kind == tarfile.REGTYPE:
                info.size = 4
                tar.addfile(info, io.BytesIO(b"perl"))
            else:
                tar.addfile(info)
    layer = oci.layer_from_tar(source, created_by="rootfs", mtime_clamp=1_600_000_000)
    image = oci.write_image(archive=tmp_path / "image.tar", reference=REFERENCE, config=CONFIG, layers=[layer])
    root = tmp_path / "rootfs"
    oci.extract_rootfs(image.archive, root)
    assert (root / "usr/bin/perl").read_bytes() == (root / "usr/bin/perl5.36.0").read_bytes() == b"perl"
    assert os.path.samefile(root / "usr/bin/perl", root / "usr/bin/perl5.36.0")
    assert not (root / "dev").exists(), "device nodes belong to the runtime, not to a layer"
    assert (root / "usr/bin/perl").stat().st_mtime == 1_600_000_000


def test_an_image_on_a_base_shares_its_layers_and_inherits_env_and_labels(tmp_path):
    base = oci.write_image(
        archive=tmp_path / "base.tar", reference="sovereign.local/base:1", config=oci.ImageConfig(
            env={"PATH": "/usr/bin", "LANG": "C.UTF-8"}, labels={"a": "base", "keep": "yes"}),
        layers=[oci.layer_from_files({"etc/os-release": b"ID=test\n"}, created_by="base files")])
    image = oci.write_image(
        archive=tmp_path / "app.tar", reference=REFERENCE, base=base.archive,
        config=oci.ImageConfig(env={"PATH": "/app/bin:/usr/bin"}, labels={"a": "app"}, entrypoint=("app",)),
        layers=[oci.layer_from_files({"app/bin/app": (b"#!/bin/sh\n", 0o755)}, created_by="app files")])
    parent, child = oci.read_image(base.archive), oci.read_image(image.archive)
    assert child.layers[0] == parent.layers[0] and len(child.layers) == 2
    assert child.config["rootfs"]["diff_ids"][0] == parent.config["rootfs"]["diff_ids"][0]
    assert child.config["config"]["Env"] == ["PATH=/app/bin:/usr/bin", "LANG=C.UTF-8"]
    assert child.config["config"]["Labels"] == {"a": "app", "keep": "yes"}
    assert [h["created_by"] for h in child.config["history"]] == ["base files", "app files"]
    root = tmp_path / "rootfs"
    oci.extract_rootfs(image.archive, root)
    assert (root / "etc/os-release").read_text() == "ID=test\n" and (root / "app/bin/app").is_file()


def test_a_file_that_is_not_an_image_archive_is_refused_naming_it(tmp_path):
    bogus = tmp_path / "bogus.tar"
    with tarfile.open(bogus, "w") as tar:
        tar.addfile(tarfile.TarInfo("hello"), io.BytesIO(b""))
    with pytest.raises(oci.ImageError, match="bogus.tar is not an OCI image archive"):
        oci.read_image(bogus)


def test_an_import_without_ctr_names_the_package_to_install(tmp_path):
    image = write(tmp_path, "image.tar", make_tree(tmp_path / "tree", mtime=0))
    with pytest.raises(oci.ImageError, match="install Debian's containerd package"):
        oci.import_image(image.archive, address=str(tmp_path / "containerd.sock"), ctr=str(tmp_path / "no-ctr"))
