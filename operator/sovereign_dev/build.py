"""Build the local cloud's Go binaries (control plane, real node, KWOK, Karpenter, MinIO) from pinned modules.

Each directory under ``gomods/`` is a tiny Go module of ours whose ``tool`` directives name the
upstream main packages and whose go.mod/go.sum pin them. ``ensure(component)`` returns the
directory holding that component's binaries, building it first when the cache has no entry for
its version. The cache lives outside the repository (``$SOVEREIGN_CACHE_DIR`` or
``~/.cache/sovereign-stack``), keyed by component, upstream version and a hash of the pin files,
so later runs, CI on the same machine and several checkouts share one build.

One component is not Go: ``llama-server``, llama.cpp's OpenAI-compatible server (the CPU engine),
built with CMake from the llama.cpp source that PyPI's ``llama-cpp-python`` sdist vendors; the
sdist is fetched with pip (hash-checked) into the same cache.

Called by ``devcluster.cluster``, ``devcluster.minio``, the test fixtures and
``python -m sovereign_dev.build`` (the set-up step of the README's commands).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sovereign.api.engines import LLAMA_CPP_BUILD, LLAMA_CPP_COMMIT

GOMODS = Path(__file__).with_name("gomods")


class BuildError(RuntimeError):
    """A component could not be built; the message carries the tail of the Go output."""


@dataclass(frozen=True)
class Component:
    """One pinned Go module of ours and the upstream module whose version names it."""

    name: str
    upstream: str
    # Files of the upstream module copied next to the binaries (module-relative paths), because
    # the binary needs them at run time and the module cache may be gone by then.
    assets: tuple[str, ...] = ()
    # Files of ours in the module directory that are part of the build (a main of our own).
    sources: tuple[str, ...] = ()
    # Build tags and environment the build needs beyond Go's defaults (runc: cgo and seccomp).
    tags: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    # A Go string variable that should report the pinned version (`-X`), without the leading v.
    version_var: str | None = None

    @property
    def moddir(self) -> Path:
        return GOMODS / self.name

    @property
    def tools(self) -> list[str]:
        """The main packages listed by the module's ``tool`` directives."""
        text = (self.moddir / "go.mod").read_text()
        block = re.search(r"^tool \(\n(.*?)^\)", text, re.S | re.M)
        lines = block.group(1).split() if block else []
        return lines + re.findall(r"^tool ([^\s(]\S*)$", text, re.M)

    @property
    def binaries(self) -> list[str]:
        return [_binary_name(tool) for tool in self.tools]

    @property
    def version(self) -> str:
        """The pinned version of the upstream module, read from go.mod (the one source of truth)."""
        text = (self.moddir / "go.mod").read_text()
        match = re.search(rf"^\s*(?:require\s+)?{re.escape(self.upstream)} (v\S+)", text, re.M)
        if not match:
            raise BuildError(f"{self.moddir / 'go.mod'} does not require {self.upstream}")
        return match.group(1)

    @property
    def key(self) -> str:
        digest = hashlib.sha256()
        for name in ("go.mod", "go.sum", *self.sources):
            digest.update((self.moddir / name).read_bytes())
        if self.tags or self.env:
            digest.update(repr((self.tags, self.env)).encode())
        return f"{self.name}-{self.version}-{digest.hexdigest()[:10]}"

    def ldflags(self) -> str:
        flags = ["-s", "-w"]
        if self.version_var:
            flags.append(f"-X {self.version_var}={self.version.lstrip('v')}")
        if self.upstream == "k8s.io/kubernetes":
            # Without these the binaries report v0.0.0-master, which breaks version-skew checks.
            major, minor = self.version.lstrip("v").split(".")[:2]
            for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
                flags += [
                    f"-X {pkg}.gitVersion={self.version}",
                    f"-X {pkg}.gitMajor={major}",
                    f"-X {pkg}.gitMinor={minor}",
                    f"-X {pkg}.gitTreeState=clean",
                ]
        return " ".join(flags)


@dataclass(frozen=True)
class CMakeComponent:
    """One CMake target built from the C/C++ source a pinned PyPI sdist carries."""

    name: str
    # The sdist (exact version, sha256 as PyPI lists it) and the source tree inside it.
    package: str
    package_version: str
    sha256: str
    source_dir: str
    # What the binary calls itself; names the cache entry next to the hash of everything below.
    version: str
    target: str
    cmake_args: tuple[str, ...]
    assets: tuple[str, ...] = ()

    @property
    def binaries(self) -> list[str]:
        return [self.target]

    @property
    def key(self) -> str:
        digest = hashlib.sha256("\n".join(
            (self.package, self.package_version, self.sha256, self.source_dir, self.target,
             *self.cmake_args)).encode())
        return f"{self.name}-{self.version}-{digest.hexdigest()[:10]}"


def _go_output_name(tool: str) -> str:
    """The file name `go build -o dir/` gives a main package (the element before a /vN suffix)."""
    parts = tool.rstrip("/").split("/")
    return parts[-2] if re.fullmatch(r"v\d+", parts[-1]) else parts[-1]


#: Binaries named otherwise than Go names them: etcd's main package is its server module's root
#: (Go says "server"); Karpenter's KWOK main is its module's kwok/ (which would read as KWOK).
_RENAMED = {"go.etcd.io/etcd/server/v3": "etcd", "sigs.k8s.io/karpenter/kwok": "karpenter"}


def _binary_name(tool: str) -> str:
    return _RENAMED.get(tool, _go_output_name(tool))


COMPONENTS: dict[str, Component | CMakeComponent] = {
    c.name: c
    for c in (
        Component("etcd", "go.etcd.io/etcd/server/v3"),
        Component("kubernetes", "k8s.io/kubernetes"),
        # The real node's kubelet and kube-proxy: the same release as the control plane, in a
        # module of their own so adding them did not change the control plane's cache key.
        Component("kubenode", "k8s.io/kubernetes"),
        Component("runc", "github.com/opencontainers/runc", tags=("seccomp",),
                  env=(("CGO_ENABLED", "1"),), version_var="main.version"),
        # Our own main linking only the plugins cluster DNS needs (upstream's links every one).
        Component("coredns", "github.com/coredns/coredns", sources=("main.go",)),
        # kwok ships no stages in its binary; these are the "fast" set kwokctl uses by default.
        Component("kwok", "sigs.k8s.io/kwok", assets=(
            "kustomize/stage/node/fast/node-initialize.yaml",
            "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
            "kustomize/stage/pod/fast/pod-ready.yaml",
            "kustomize/stage/pod/fast/pod-complete.yaml",
            "kustomize/stage/pod/fast/pod-delete.yaml",
        )),
        Component("minio", "github.com/minio/minio"),
        # Karpenter with its KWOK cloud provider (the `kwok/` main of sigs.k8s.io/karpenter),
        # and the CRDs of that release: it serves them to itself, so they come from its build.
        Component("karpenter", "sigs.k8s.io/karpenter", assets=(
            "pkg/apis/crds/karpenter.sh_nodepools.yaml",
            "pkg/apis/crds/karpenter.sh_nodeclaims.yaml",
            "pkg/apis/crds/karpenter.sh_nodeoverlays.yaml",
            "kwok/apis/crds/karpenter.kwok.sh_kwoknodeclasses.yaml",
        )),
        Component("helm", "helm.sh/helm/v4"),
        # Our own main over kstatus (github.com/fluxcd/cli-utils, the copy Flux runs): the tests
        # ask it how Flux judges a stack's status. sigs.k8s.io/cli-utils is not on the proxy here.
        Component("kstatus", "github.com/fluxcd/cli-utils", sources=("main.go",)),
        # llama-cpp-python 0.3.36 vendors llama.cpp at LLAMA_CPP_COMMIT (its CHANGELOG says so;
        # _build_cmake checks it), which upstream released as build LLAMA_CPP_BUILD.
        CMakeComponent(
            "llama-server", package="llama-cpp-python", package_version="0.3.36",
            sha256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
            source_dir="vendor/llama.cpp", version=f"b{LLAMA_CPP_BUILD}", target="llama-server",
            cmake_args=(
                "-DCMAKE_BUILD_TYPE=Release",
                # The sdist has no .git, from which llama.cpp would read its build number.
                f"-DLLAMA_BUILD_NUMBER={LLAMA_CPP_BUILD}",
                f"-DLLAMA_BUILD_COMMIT={LLAMA_CPP_COMMIT[:7]}",
                # One self-contained binary for any x86-64-v3 machine (AVX2, as ggml's non-native
                # default): no shared ggml/llama libraries, no OpenMP runtime, libstdc++ linked
                # in, stripped; only glibc comes from the image.
                "-DBUILD_SHARED_LIBS=OFF",
                "-DGGML_NATIVE=OFF",
                "-DGGML_OPENMP=OFF",
                "-DCMAKE_EXE_LINKER_FLAGS=-static-libstdc++ -static-libgcc -s",
                # Nothing fetched at build or run time: no HTTPS client (model downloads), no web
                # UI (built with npm or downloaded from Hugging Face otherwise).
                "-DLLAMA_OPENSSL=OFF",
                "-DLLAMA_BUILD_UI=OFF",
                "-DLLAMA_USE_PREBUILT_UI=OFF",
                "-DLLAMA_BUILD_TESTS=OFF",
                "-DLLAMA_BUILD_EXAMPLES=OFF",
            ),
        ),
    )
}


def cache_root() -> Path:
    root = os.environ.get("SOVEREIGN_CACHE_DIR") or Path.home() / ".cache" / "sovereign-stack"
    return Path(root)


def cached_dir(component: Component | CMakeComponent) -> Path:
    return cache_root() / "bin" / component.key


def is_cached(name: str) -> bool:
    component = COMPONENTS[name]
    directory = cached_dir(component)
    wanted = component.binaries + [f"assets/{Path(a).name}" for a in component.assets]
    return all((directory / w).is_file() for w in wanted)


def ensure(name: str, *, progress: bool = True) -> Path:
    """Return the directory with ``name``'s binaries, building them once if the cache lacks them."""
    component = COMPONENTS[name]
    target = cached_dir(component)
    if is_cached(name):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Two test sessions or a test and `dev up` may ask at once: one builds, the other waits.
    with _locked(target.parent / f".{component.name}.lock"):
        if is_cached(name):
            return target
        if isinstance(component, CMakeComponent):
            _build_cmake(component, target, progress=progress)
        else:
            _build(component, target, progress=progress)
    return target


def ensure_all(names: list[str] | None = None, *, progress: bool = True) -> dict[str, Path]:
    return {n: ensure(n, progress=progress) for n in (names or list(COMPONENTS))}


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(component: Component, target: Path, *, progress: bool) -> None:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not Path(go).exists():
        raise BuildError("the Go toolchain is not installed: install Go 1.26+ and put `go` on PATH")
    staging = Path(tempfile.mkdtemp(prefix=f".{component.key}.", dir=target.parent))
    command = [
        go, "build", "-v", "-trimpath", "-ldflags", component.ldflags(),
        *(["-tags", ",".join(component.tags)] if component.tags else []),
        "-o", str(staging) + "/", *component.tools,
    ]
    env = {**os.environ, **dict(component.env)}
    started = time.monotonic()
    label = f"{component.name} {component.version}"
    log = staging / "build.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command, cwd=component.moddir, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )
        assert proc.stdout is not None
        _show_progress(proc.stdout, out, label=label, unit="packages", enabled=progress)
        code = proc.wait()
    if code != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise BuildError(f"building {label} failed (exit {code}):\n{_tail(log)}")
    for tool in component.tools:
        built, wanted = staging / _go_output_name(tool), staging / _binary_name(tool)
        if built != wanted and built.is_file():
            built.rename(wanted)
    for binary in component.binaries:
        if not (staging / binary).is_file():
            raise BuildError(f"building {label} produced no {binary} in {staging}")
    if component.assets:
        _copy_assets(component, staging / "assets", go=go, env=env)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    _say(f"built {label} in {time.monotonic() - started:.0f}s -> {target}", enabled=progress)


def _copy_assets(component: Component, destination: Path, *, go: str, env: dict) -> None:
    moddir = subprocess.run([go, "list", "-m", "-f", "{{.Dir}}", component.upstream],
                            cwd=component.moddir, env=env, capture_output=True, text=True,
                            check=True).stdout.strip()
    destination.mkdir()
    for asset in component.assets:
        shutil.copyfile(Path(moddir) / asset, destination / Path(asset).name)


def _build_cmake(component: CMakeComponent, target: Path, *, progress: bool) -> None:
    """Configure and build one target of the sdist's source tree; only the binary is kept."""
    for tool in ("cmake", "make", "g++"):
        if not shutil.which(tool):
            raise BuildError(f"building {component.name} needs {tool}: install Debian's cmake, "
                             "make and g++ (`make setup` does)")
    started = time.monotonic()
    label = f"{component.name} {component.version}"
    source = _unpacked_sdist(component)
    staging = Path(tempfile.mkdtemp(prefix=f".{component.key}.", dir=target.parent))
    build_dir = Path(tempfile.mkdtemp(prefix=f"{component.key}.", dir=_work_dir("build")))
    log = staging / "build.log"
    steps = (
        ["cmake", "-S", str(source), "-B", str(build_dir), "-G", "Unix Makefiles",
         *component.cmake_args],
        # Two jobs: the machines this runs on have two cores and other builds beside it.
        ["cmake", "--build", str(build_dir), "--target", component.target, "-j2"],
    )
    try:
        with open(log, "w") as out:
            for command in steps:
                proc = subprocess.Popen(command, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
                assert proc.stdout is not None
                _show_progress(proc.stdout, out, label=label, unit="lines", enabled=progress)
                code = proc.wait()
                if code != 0:
                    raise BuildError(f"building {label} failed (exit {code} from "
                                     f"`{' '.join(command[:2])}`):\n{_tail(log)}")
        built = build_dir / "bin" / component.target
        if not built.is_file():
            raise BuildError(f"building {label} produced no {built}:\n{_tail(log)}")
        shutil.copy2(built, staging / component.target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    _say(f"built {label} in {time.monotonic() - started:.0f}s -> {target}", enabled=progress)


def _unpacked_sdist(component: CMakeComponent) -> Path:
    """The sdist's source tree under the cache, downloaded by pip with its hash checked."""
    root = _work_dir("src") / f"{component.package}-{component.package_version}"
    source = root / component.source_dir
    if (root / ".unpacked").is_file():
        return source
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    requirement = root / "requirements.txt"
    requirement.write_text(f"{component.package}=={component.package_version} "
                           f"--hash=sha256:{component.sha256}\n")
    fetched = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
         "--require-hashes", "-r", str(requirement), "-d", str(root)],
        capture_output=True, text=True)
    archives = list(root.glob("*.tar.gz"))
    if fetched.returncode != 0 or len(archives) != 1:
        raise BuildError(f"pip could not download {component.package}=={component.package_version}"
                         f" with sha256 {component.sha256}:\n{fetched.stdout}{fetched.stderr}")
    prefix = f"{archives[0].name.removesuffix('.tar.gz')}/"
    with tarfile.open(archives[0]) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(prefix)]
        for member in members:
            member.name = member.name.removeprefix(prefix)
        archive.extractall(root, members=members, filter="data")
    _check_vendored_commit(component, root)
    archives[0].unlink()
    (root / ".unpacked").touch()
    return source


def _check_vendored_commit(component: CMakeComponent, root: Path) -> None:
    # llama-cpp-python's changelog names the llama.cpp commit each release vendors; a pin that
    # moves one without the other would build a binary that lies about its version.
    changelog = (root / "CHANGELOG.md").read_text()
    section = changelog.split(f"## [{component.package_version}]", 1)[-1].split("\n## [", 1)[0]
    if f"llama.cpp@{LLAMA_CPP_COMMIT[:9]}" not in section:
        raise BuildError(
            f"{component.package} {component.package_version} does not vendor llama.cpp "
            f"{LLAMA_CPP_COMMIT[:9]} (its CHANGELOG.md says otherwise): pin the sdist release that "
            "vendors sovereign.api.engines.LLAMA_CPP_COMMIT, or move that pin with it")


def _work_dir(kind: str) -> Path:
    directory = cache_root() / kind
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _tail(log: Path) -> str:
    return "".join(log.read_text().splitlines(keepends=True)[-40:])


def _show_progress(stream, log_file, *, label: str, unit: str, enabled: bool) -> None:
    """Copy a build's output to the log while showing a live count of its lines of progress."""
    if not enabled:
        for line in stream:
            log_file.write(line)
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    columns = (SpinnerColumn(), TextColumn("[bold]building {task.fields[label]}"),
               TextColumn(f"{{task.completed}} {unit}"), TimeElapsedColumn(),
               TextColumn("[dim]{task.fields[last]}"))
    with Progress(*columns, console=console, transient=not console.is_terminal) as bar:
        task = bar.add_task("build", total=None, label=label, last="")
        for line in stream:
            log_file.write(line)
            bar.update(task, advance=1, last=line.strip()[-60:])
            if not console.is_terminal and bar.tasks[0].completed % 500 == 0:
                console.print(f"building {label}: {bar.tasks[0].completed} {unit} so far")


def _say(message: str, *, enabled: bool) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or list(COMPONENTS)
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown:
        print(f"unknown component(s) {unknown}; choose from {sorted(COMPONENTS)}", file=sys.stderr)
        return 2
    try:
        for name, path in ensure_all(names).items():
            print(f"{name}: {path}")
    except BuildError as err:
        print(str(err), file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
