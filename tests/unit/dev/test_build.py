"""The pinned Go modules name the binaries and versions the harness expects."""

from sovereign_dev import build


def test_components_pin_versions_and_name_binaries():
    kube = build.COMPONENTS["kubernetes"]
    assert kube.version.startswith("v1.")
    assert set(kube.binaries) == {"kube-apiserver", "kube-controller-manager", "kube-scheduler",
                                  "kubectl"}
    assert set(build.COMPONENTS["etcd"].binaries) == {"etcd", "etcdctl"}
    assert build.COMPONENTS["kwok"].binaries == ["kwok"]
    assert build.COMPONENTS["minio"].binaries == ["minio"]


def test_kubernetes_build_stamps_its_version():
    kube = build.COMPONENTS["kubernetes"]
    assert f"k8s.io/component-base/version.gitVersion={kube.version}" in kube.ldflags()


def test_cache_key_is_outside_the_repo_and_changes_with_the_pin(tmp_path, monkeypatch):
    monkeypatch.setenv("SOVEREIGN_CACHE_DIR", str(tmp_path))
    kube = build.COMPONENTS["kubernetes"]
    directory = build.cached_dir(kube)
    assert directory.parent == tmp_path / "bin"
    assert directory.name.startswith(f"kubernetes-{kube.version}-")
    assert not build.is_cached("kubernetes")


def test_every_staging_module_of_kubernetes_is_replaced_with_the_same_release():
    text = (build.GOMODS / "kubernetes" / "go.mod").read_text()
    minor = build.COMPONENTS["kubernetes"].version.replace("v1.", "v0.")
    replaces = [line.split() for line in text.splitlines() if "=>" in line]
    assert len(replaces) > 25
    assert all(parts[-1] == minor for parts in replaces)
