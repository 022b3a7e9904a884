"""Deterministic OCI image archives, written without a container engine, and their import into containerd.

No registry is reachable here and no Docker engine runs, so the images the real node runs (the
operator, the pause image, the sample client, the CPU engine) are written by this module as OCI
image-layout archives (``oci-layout``, ``index.json``, ``blobs/sha256/...``) that containerd's
``ctr images import`` reads. The same inputs always give the same bytes (entries sorted, owners
and times normalised, gzip without a time stamp, JSON with sorted keys), so an image's digest is a
function of its content and a rebuild that changes nothing changes no digest.

The API is small:

* layers: :func:`layer_from_directory`, :func:`layer_from_tar`, :func:`layer_from_files` describe
  a layer; :func:`write_image` writes an archive (optionally on top of a base archive's layers)
  and returns its :class:`ImageRef`;
* reading back: :func:`read_image` (manifest, config, layer descriptors) and
  :func:`extract_rootfs` (unpack the layers into a directory, to build on top of an image);
* containerd: :func:`import_image` runs ``ctr -a <socket> -n k8s.io images import``.

Called by ``sovereign_dev.images`` (which builds and caches the project's images) and by the
real-node harness, which imports them into its containerd.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

# Media types of the OCI image spec (v1.0): the ones containerd 1.6 imports.
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPES = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "none": "application/vnd.oci.image.layer.v1.tar",
}
#: containerd's import names the image by this annotation of the index entry (full reference).
CONTAINERD_NAME_ANNOTATION = "io.containerd.image.name"
#: The OCI spec's own name annotation; tools other than containerd (skopeo, umoci) read it.
OCI_REF_ANNOTATION = "org.opencontainers.image.ref.name"

Compression = Literal["gzip", "none"]
_CHUNK = 1 << 20


class ImageError(RuntimeError):
    """An image could not be written, read or imported; the message says which part and why."""


@dataclass(frozen=True)
class ImageConfig:
    """The runtime part of an image config: what a container starts with unless its pod says otherwise."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    user: str = ""
    working_dir: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        """The ``config`` object of the OCI image config (empty fields left out)."""
        config: dict[str, object] = {}
        if self.env:
            config["Env"] = [f"{key}={value}" for key, value in self.env.items()]
        if self.entrypoint:
            config["Entrypoint"] = list(self.entrypoint)
        if self.cmd:
            config["Cmd"] = list(self.cmd)
        if self.user:
            config["User"] = self.user
        if self.working_dir:
            config["WorkingDir"] = self.working_dir
        if self.labels:
            config["Labels"] = dict(sorted(self.labels.items()))
        return config


@dataclass(frozen=True)
class Entry:
    """One member of a layer: its header, where its bytes come from, and which entries share them."""

    info: tarfile.TarInfo
    read: Callable[[], BinaryIO] | None = None
    #: Entries with the same key are hard links of one file (same inode, or a tar's link target).
    link_key: object | None = None


@dataclass(frozen=True)
class Layer:
    """A layer to write: its entries (any order; written sorted) and a line for the image history."""

    entries: tuple[Entry, ...]
    created_by: str


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int

    def as_json(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class ImageRef:
    """A written archive: where it is, the reference it imports as and its manifest digest."""

    archive: Path
    reference: str
    digest: str


@dataclass(frozen=True)
class ImageContents:
    """An archive read back: its reference, manifest, config and layer descriptors."""

    reference: str
    digest: str
    manifest: dict
    config: dict
    layers: tuple[Descriptor, ...]


# --------------------------------------------------------------------------------------- layers

def _header(name: str, *, kind: bytes, mode: int, uid: int, gid: int, mtime: int, size: int = 0,
            linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, gid, mtime
    info.size, info.linkname = size, linkname
    info.uname = info.gname = ""
    return info


def layer_from_files(files: Mapping[str, bytes | tuple[bytes, int]], *, created_by: str,
                     directories: Iterable[str] = (), owner: tuple[int, int] = (0, 0)) -> Layer:
    """A layer of a few files given as bytes (mode 0644, or ``(bytes, mode)``), parents created 0755."""
    entries: dict[str, Entry] = {}
    uid, gid = owner

    def add_parents(path: str) -> None:
        parts = path.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            parent = "/".join(parts[:depth])
            entries.setdefault(parent, Entry(_header(parent, kind=tarfile.DIRTYPE, mode=0o755, uid=0, gid=0,
                                                     mtime=0)))

    for directory in directories:
        name = _member_name(directory)
        add_parents(name)
        entries[name] = Entry(_header(name, kind=tarfile.DIRTYPE, mode=0o755, uid=uid, gid=gid, mtime=0))
    for path, content in files.items():
        data, mode = content if isinstance(content, tuple) else (content, 0o644)
        name = _member_name(path)
        add_parents(name)
        entries[name] = Entry(_header(name, kind=tarfile.REGTYPE, mode=mode, uid=uid, gid=gid, mtime=0,
                                      size=len(data)), read=lambda data=data: io.BytesIO(data))
    return Layer(entries=tuple(entries.values()), created_by=created_by)


def layer_from_directory(root: Path, *, created_by: str, prefix: str = "", owner: tuple[int, int] | None = (0, 0),
                         mtime_clamp: int = 0, exclude: Callable[[str], bool] = lambda name: False) -> Layer:
    """A layer of everything under ``root``, placed under ``prefix`` inside the image.

    ``owner`` replaces every uid/gid (None keeps the files' own, for trees built as root);
    modification times are clamped to ``mtime_clamp`` (0: all zero). Sockets and device nodes are
    left out (the runtime provides /dev); ``exclude`` drops members by their name in the image.
    Parent directories of ``prefix`` are added with mode 0755, owned by root.
    """
    root = Path(root)
    base = _member_name(prefix) if prefix else ""
    entries: list[Entry] = []
    if base:
        parts = base.split("/")
        for depth in range(1, len(parts)):
            entries.append(Entry(_header("/".join(parts[:depth]), kind=tarfile.DIRTYPE, mode=0o755, uid=0, gid=0,
                                         mtime=0)))
    for path in _walk(root):
        relative = path.relative_to(root).as_posix()
        name = "/".join(part for part in (base, "" if relative == "." else relative) if part)
        if not name or exclude(name):
            continue
        st = path.lstat()
        uid, gid = owner if owner is not None else (st.st_uid, st.st_gid)
        common = {"mode": stat.S_IMODE(st.st_mode), "uid": uid, "gid": gid,
                  "mtime": min(int(st.st_mtime), mtime_clamp)}
        if stat.S_ISDIR(st.st_mode):
            entries.append(Entry(_header(name, kind=tarfile.DIRTYPE, **common)))
        elif stat.S_ISLNK(st.st_mode):
            entries.append(Entry(_header(name, kind=tarfile.SYMTYPE, linkname=os.readlink(path), **common)))
        elif stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino) if st.st_nlink > 1 else None
            entries.append(Entry(_header(name, kind=tarfile.REGTYPE, size=st.st_size, **common),
                                 read=lambda path=path: open(path, "rb"), link_key=key))
    return Layer(entries=tuple(entries), created_by=created_by)


def _walk(root: Path) -> Iterator[Path]:
    yield root
    for directory, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            yield Path(directory) / name


def layer_from_tar(archive: Path, *, created_by: str, mtime_clamp: int | None = None,
                   exclude: Callable[[str], bool] = lambda name: False) -> Layer:
    """A layer holding the members of an uncompressed tar (a root filesystem), re-sorted.

    Owners are kept (a root filesystem has its own), user and group names dropped (containerd
    uses the numeric ids), times clamped to ``mtime_clamp`` when given. Device nodes are left
    out, and so is the archive's root entry.
    """
    handle = tarfile.open(archive, "r:")
    entries: list[Entry] = []
    for member in handle.getmembers():
        name = _member_name(member.name)
        if not name or exclude(name) or member.ischr() or member.isblk() or member.isfifo():
            continue
        info = _header(name, kind=member.type, mode=member.mode, uid=member.uid, gid=member.gid,
                       mtime=member.mtime if mtime_clamp is None else min(member.mtime, mtime_clamp),
                       size=member.size if member.isreg() else 0,
                       linkname=_member_name(member.linkname) if member.islnk() else member.linkname)
        if member.islnk():
            entries.append(Entry(info, link_key=info.linkname))
        elif member.isreg():
            entries.append(Entry(info, read=lambda member=member: handle.extractfile(member), link_key=name))
        else:
            entries.append(Entry(info))
    return Layer(entries=tuple(entries), created_by=created_by)


def _member_name(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.strip("/") if name not in (".", "/") else ""


def _normalised(layer: Layer) -> list[Entry]:
    """Entries sorted by name; of each set of hard links the first name holds the data."""
    by_name = {entry.info.name: entry for entry in layer.entries}
    ordered = [by_name[name] for name in sorted(by_name)]
    holder: dict[object, str] = {}
    result: list[Entry] = []
    for entry in ordered:
        info = entry.info
        if entry.link_key is None:
            result.append(entry)
            continue
        if entry.link_key in holder:
            link = _copy_info(info, kind=tarfile.LNKTYPE, size=0, linkname=holder[entry.link_key])
            result.append(Entry(link))
            continue
        holder[entry.link_key] = info.name
        if info.type == tarfile.LNKTYPE:
            # A tar's link listed before its target: this name holds the data now.
            target = by_name.get(info.linkname)
            if target is None or target.read is None:
                raise ImageError(f"hard link {info.name} -> {info.linkname}: the target is not in the layer")
            info = _copy_info(target.info, kind=tarfile.REGTYPE, name=info.name)
            result.append(Entry(info, read=target.read))
        else:
            result.append(entry)
    return result


def _copy_info(info: tarfile.TarInfo, *, kind: bytes, size: int | None = None, linkname: str = "",
               name: str | None = None) -> tarfile.TarInfo:
    return _header(name or info.name, kind=kind, mode=info.mode, uid=info.uid, gid=info.gid, mtime=info.mtime,
                   size=info.size if size is None else size, linkname=linkname)


# --------------------------------------------------------------------------------------- writing

class _HashingWriter(io.RawIOBase):
    """A write-only file that hashes and counts what passes through it to another file."""

    def __init__(self, target: BinaryIO) -> None:
        self.target, self.sha, self.size = target, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        self.sha.update(data)
        self.size += len(data)
        self.target.write(data)
        return len(data)

    @property
    def digest(self) -> str:
        return f"sha256:{self.sha.hexdigest()}"


def _write_layer(layer: Layer, *, blob: BinaryIO, compression: Compression) -> tuple[Descriptor, str]:
    """Write ``layer`` into ``blob``; return its descriptor and its diff id (digest of the plain tar)."""
    outer = _HashingWriter(blob)
    if compression == "gzip":
        # No file name and mtime 0 in the gzip header: the blob depends on the content only.
        compressor: BinaryIO = gzip.GzipFile(filename="", mode="wb", fileobj=outer, mtime=0, compresslevel=6)
        plain = _HashingWriter(compressor)
    else:
        compressor, plain = outer, outer  # type: ignore[assignment]
    with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT, bufsize=_CHUNK) as tar:
        for entry in _normalised(layer):
            if entry.read is None:
                tar.addfile(entry.info)
            else:
                with entry.read() as source:
                    tar.addfile(entry.info, source)
    if compression == "gzip":
        compressor.close()
    return Descriptor(LAYER_MEDIA_TYPES[compression], outer.digest, outer.size), plain.digest


def _json_bytes(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def write_image(*, archive: Path, reference: str, config: ImageConfig, layers: Sequence[Layer],
                base: Path | None = None, compression: Compression = "gzip",
                annotations: Mapping[str, str] | None = None) -> ImageRef:
    """Write an OCI image archive that imports as ``reference``; return where it is and its digest.

    With ``base`` (another archive of this module), its layers come first, unchanged (same
    blobs, so containerd stores them once), and its config's Env and Labels are inherited,
    ``config``'s entries winning; the rest of the config is ``config``'s own. The archive is
    written next to its final path and renamed into place, so a reader never sees half of one.
    """
    archive = Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    base_layers: list[Descriptor] = []
    base_diff_ids: list[str] = []
    base_history: list[dict] = []
    env, labels = dict(config.env), dict(config.labels)
    if base is not None:
        parent = read_image(base)
        base_layers = list(parent.layers)
        base_diff_ids = list(parent.config["rootfs"]["diff_ids"])
        base_history = list(parent.config.get("history", []))
        inherited = parent.config.get("config", {})
        env = {**dict(item.split("=", 1) for item in inherited.get("Env", [])), **env}
        labels = {**inherited.get("Labels", {}), **labels}
    config = ImageConfig(entrypoint=config.entrypoint, cmd=config.cmd, env=env, user=config.user,
                         working_dir=config.working_dir, labels=labels)
    with tempfile.TemporaryDirectory(prefix=f".{archive.name}.", dir=archive.parent) as scratch:
        blobs: dict[str, Path] = {}
        descriptors, diff_ids = [], []
        for number, layer in enumerate(layers):
            path = Path(scratch) / f"layer-{number}"
            with open(path, "wb") as blob:
                descriptor, diff_id = _write_layer(layer, blob=blob, compression=compression)
            blobs[descriptor.digest] = path
            descriptors.append(descriptor)
            diff_ids.append(diff_id)
        if base is not None:
            for descriptor in base_layers:
                blobs[descriptor.digest] = Path(scratch) / f"base-{descriptor.digest[7:]}"
            _copy_blobs(base, {d.digest: blobs[d.digest] for d in base_layers})
        image_config = {
            "architecture": "amd64",
            "os": "linux",
            "config": config.as_json(),
            "rootfs": {"type": "layers", "diff_ids": base_diff_ids + diff_ids},
            "history": base_history + [{"created_by": layer.created_by} for layer in layers],
        }
        config_bytes = _json_bytes(image_config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": Descriptor(CONFIG_MEDIA_TYPE, _digest(config_bytes), len(config_bytes)).as_json(),
            "layers": [d.as_json() for d in base_layers + descriptors],
        }
        if annotations:
            manifest["annotations"] = dict(annotations)
        manifest_bytes = _json_bytes(manifest)
        manifest_digest = _digest(manifest_bytes)
        index = {
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": [{
                **Descriptor(MANIFEST_MEDIA_TYPE, manifest_digest, len(manifest_bytes)).as_json(),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {CONTAINERD_NAME_ANNOTATION: reference, OCI_REF_ANNOTATION: reference},
            }],
        }
        small = {
            _digest(config_bytes): config_bytes,
            manifest_digest: manifest_bytes,
        }
        staging = Path(scratch) / "archive.tar"
        with tarfile.open(staging, "w", format=tarfile.PAX_FORMAT) as tar:
            members: dict[str, bytes | Path] = {
                "oci-layout": _json_bytes({"imageLayoutVersion": "1.0.0"}),
                "index.json": _json_bytes(index),
            }
            for digest, content in {**small, **blobs}.items():
                members[f"blobs/sha256/{digest[7:]}"] = content
            directories = ["blobs", "blobs/sha256"]
            for name in directories:
                tar.addfile(_header(name, kind=tarfile.DIRTYPE, mode=0o755, uid=0, gid=0, mtime=0))
            for name in sorted(members):
                content = members[name]
                if isinstance(content, bytes):
                    tar.addfile(_header(name, kind=tarfile.REGTYPE, mode=0o644, uid=0, gid=0, mtime=0,
                                        size=len(content)), io.BytesIO(content))
                else:
                    with open(content, "rb") as source:
                        tar.addfile(_header(name, kind=tarfile.REGTYPE, mode=0o644, uid=0, gid=0, mtime=0,
                                            size=content.stat().st_size), source)
        staging.replace(archive)
    return ImageRef(archive=archive, reference=reference, digest=manifest_digest)


def _copy_blobs(archive: Path, targets: Mapping[str, Path]) -> None:
    with tarfile.open(archive, "r:") as tar:
        for digest, target in targets.items():
            source = tar.extractfile(f"blobs/sha256/{digest[7:]}")
            if source is None:
                raise ImageError(f"{archive}: blob {digest} is missing")
            with open(target, "wb") as out:
                shutil.copyfileobj(source, out, _CHUNK)


# --------------------------------------------------------------------------------------- reading

def read_image(archive: Path) -> ImageContents:
    """Read an archive's single image back: reference, manifest digest, manifest, config, layers."""
    try:
        with tarfile.open(archive, "r:") as tar:
            def blob(digest: str) -> bytes:
                handle = tar.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}")
                if handle is None:
                    raise ImageError(f"{archive}: blob {digest} is missing")
                data = handle.read()
                if _digest(data) != digest:
                    raise ImageError(f"{archive}: blob {digest} does not match its digest")
                return data

            layout = json.loads(tar.extractfile("oci-layout").read())  # type: ignore[union-attr]
            if layout.get("imageLayoutVersion") != "1.0.0":
                raise ImageError(f"{archive}: oci-layout is {layout}, expected imageLayoutVersion 1.0.0")
            index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
            (entry,) = index["manifests"]
            manifest = json.loads(blob(entry["digest"]))
            config = json.loads(blob(manifest["config"]["digest"]))
    except (KeyError, ValueError, tarfile.TarError) as err:
        raise ImageError(f"{archive} is not an OCI image archive of one image: {err}") from err
    layers = tuple(Descriptor(d["mediaType"], d["digest"], d["size"]) for d in manifest["layers"])
    return ImageContents(reference=entry.get("annotations", {}).get(CONTAINERD_NAME_ANNOTATION, ""),
                         digest=entry["digest"], manifest=manifest, config=config, layers=layers)


#: Our own layers are trusted (device-free, owners kept); Python 3.11.4+ asks to say so, and
#: Debian's 3.11.2 predates extraction filters.
_TRUSTED: dict[str, str] = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}


def extract_rootfs(archive: Path, destination: Path) -> None:
    """Unpack the image's layers, in order, into ``destination`` (owners kept when run as root).

    The layers this module writes hold no whiteouts, so unpacking them in order is the image's
    root filesystem; a layer holding one is refused rather than unpacked wrongly.
    """
    image = read_image(archive)
    destination.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:") as outer:
        for descriptor in image.layers:
            blob = outer.extractfile(f"blobs/sha256/{descriptor.digest[7:]}")
            mode = "r|gz" if descriptor.media_type.endswith("+gzip") else "r|"
            with tarfile.open(fileobj=blob, mode=mode) as layer:  # type: ignore[arg-type]
                for member in layer:
                    if Path(member.name).name.startswith(".wh."):
                        raise ImageError(f"{archive}: layer {descriptor.digest} holds a whiteout ({member.name})")
                    layer.extract(member, destination, numeric_owner=True, **_TRUSTED)


# --------------------------------------------------------------------------------------- containerd

def import_image(archive: Path, *, address: str, namespace: str = "k8s.io", ctr: str = "ctr",
                 timeout: float = 600) -> str:
    """Import ``archive`` into the containerd at ``address`` (its socket); return the reference.

    The image lands in ``namespace`` (``k8s.io`` is the one the CRI plugin, hence kubelet, sees)
    under the reference written in the archive, so pods naming it start without a pull.
    Raises :class:`ImageError` carrying ctr's output when the import fails.
    """
    reference = read_image(archive).reference
    command = [ctr, "-a", address, "-n", namespace, "images", "import", str(archive)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as err:
        raise ImageError(f"`{ctr}` is not installed: install Debian's containerd package") from err
    except subprocess.TimeoutExpired as err:
        raise ImageError(f"`{' '.join(command)}` did not finish within {timeout:.0f}s") from err
    if result.returncode != 0:
        raise ImageError(f"`{' '.join(command)}` failed (exit {result.returncode}): "
                         f"{(result.stderr or result.stdout).strip()[-2000:]}")
    return reference
