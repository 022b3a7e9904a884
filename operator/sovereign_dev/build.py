"""Build the local cloud's Go binaries (control plane, real node, KWOK, MinIO) from pinned modules.

Each directory under ``gomods/`` is a tiny Go module of ours whose ``tool`` directives name the
upstream main packages and whose go.mod/go.sum pin them. ``ensure(component)`` returns the
directory holding that component's binaries, building it first when the cache has no entry for
its version. The cache lives outside the repository (``$SOVEREIGN_CACHE_DIR`` or
``~/.cache/sovereign-stack``), keyed by component, upstream version and a hash of the pin files,
so later runs, CI on the same machine and several checkouts share one build.

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
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

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


def _go_output_name(tool: str) -> str:
    """The file name `go build -o dir/` gives a main package (the element before a /vN suffix)."""
    parts = tool.rstrip("/").split("/")
    return parts[-2] if re.fullmatch(r"v\d+", parts[-1]) else parts[-1]


def _binary_name(tool: str) -> str:
    # etcd's main package is its server module's root, so Go would call the binary "server".
    name = _go_output_name(tool)
    return {"server": "etcd"}.get(name, name)


COMPONENTS: dict[str, Component] = {
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
        Component("helm", "helm.sh/helm/v4"),
        # Our own main over kstatus (github.com/fluxcd/cli-utils, the copy Flux runs): the tests
        # ask it how Flux judges a stack's status. sigs.k8s.io/cli-utils is not on the proxy here.
        Component("kstatus", "github.com/fluxcd/cli-utils", sources=("main.go",)),
    )
}


def cache_root() -> Path:
    root = os.environ.get("SOVEREIGN_CACHE_DIR") or Path.home() / ".cache" / "sovereign-stack"
    return Path(root)


def cached_dir(component: Component) -> Path:
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
        _show_progress(proc.stdout, out, label=label, enabled=progress)
        code = proc.wait()
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        shutil.rmtree(staging, ignore_errors=True)
        raise BuildError(f"building {label} failed (exit {code}):\n{tail}")
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


def _show_progress(stream, log_file, *, label: str, enabled: bool) -> None:
    """Copy `go build -v` output to the log while showing a live count of compiled packages."""
    if not enabled:
        for line in stream:
            log_file.write(line)
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    columns = (SpinnerColumn(), TextColumn("[bold]building {task.fields[label]}"),
               TextColumn("{task.completed} packages"), TimeElapsedColumn(),
               TextColumn("[dim]{task.fields[last]}"))
    with Progress(*columns, console=console, transient=not console.is_terminal) as bar:
        task = bar.add_task("build", total=None, label=label, last="")
        for line in stream:
            log_file.write(line)
            bar.update(task, advance=1, last=line.strip()[-60:])
            if not console.is_terminal and bar.tasks[0].completed % 500 == 0:
                console.print(f"building {label}: {bar.tasks[0].completed} packages compiled")


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
