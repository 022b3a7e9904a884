"""The pinned Go modules and the llama.cpp sdist name the binaries and versions the harness expects."""

import pytest

from sovereign.api.engines import LLAMA_CPP_BUILD, LLAMA_CPP_COMMIT, LLAMA_CPP_IMAGE
from sovereign_dev import build


def test_components_pin_versions_and_name_binaries():
    kube = build.COMPONENTS["kubernetes"]
    assert kube.version.startswith("v1.")
    assert set(kube.binaries) == {"kube-apiserver", "kube-controller-manager", "kube-scheduler",
                                  "kubectl"}
    assert set(build.COMPONENTS["etcd"].binaries) == {"etcd", "etcdctl"}
    assert build.COMPONENTS["kwok"].binaries == ["kwok"]
    assert build.COMPONENTS["minio"].binaries == ["minio"]
    # Karpenter's KWOK main (module sigs.k8s.io/karpenter, package kwok/) is not KWOK itself.
    karpenter = build.COMPONENTS["karpenter"]
    assert karpenter.binaries == ["karpenter"]
    assert karpenter.version == "v1.14.1"


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


def test_real_node_components_pin_the_control_plane_release_and_name_their_binaries():
    kube, node = build.COMPONENTS["kubernetes"], build.COMPONENTS["kubenode"]
    assert node.version == kube.version
    assert set(node.binaries) == {"kubelet", "kube-proxy"}
    # Same release stamped into the node binaries, so version-skew checks see v1.x, not master.
    assert f"k8s.io/component-base/version.gitVersion={node.version}" in node.ldflags()
    # Its own module: adding node binaries must not change the control plane's cache key.
    assert node.key != kube.key and kube.key.startswith(f"kubernetes-{kube.version}-")
    assert build.COMPONENTS["coredns"].binaries == ["coredns"]
    assert build.COMPONENTS["runc"].binaries == ["runc"]


def test_runc_builds_with_cgo_and_seccomp_and_reports_its_version():
    runc = build.COMPONENTS["runc"]
    assert runc.version == "v1.2.6"
    assert runc.tags == ("seccomp",)
    assert dict(runc.env) == {"CGO_ENABLED": "1"}
    assert "-X main.version=1.2.6" in runc.ldflags()


def test_build_tags_and_environment_are_part_of_the_cache_key():
    runc = build.COMPONENTS["runc"]
    plain = build.Component("runc", runc.upstream, version_var=runc.version_var)
    assert plain.key != runc.key


def test_llama_server_is_built_at_the_llama_cpp_release_the_operator_renders():
    server = build.COMPONENTS["llama-server"]
    assert server.binaries == ["llama-server"]
    assert server.version == f"b{LLAMA_CPP_BUILD}"
    assert f"-DLLAMA_BUILD_NUMBER={LLAMA_CPP_BUILD}" in server.cmake_args
    # The local engine image is tagged as the operator's default, so the tag must name this build.
    assert LLAMA_CPP_IMAGE == f"ghcr.io/ggml-org/llama.cpp:server-{server.version}"
    assert build.cached_dir(server).name.startswith(f"llama-server-b{LLAMA_CPP_BUILD}-")


def test_an_sdist_that_vendors_another_llama_cpp_commit_is_refused(tmp_path):
    server = build.COMPONENTS["llama-server"]
    (tmp_path / "CHANGELOG.md").write_text(
        f"## [{server.package_version}]\n\n- feat: update llama.cpp to ggml-org/llama.cpp@deadbeef1\n\n"
        f"## [0.0.1]\n\n- feat: update llama.cpp to ggml-org/llama.cpp@{LLAMA_CPP_COMMIT[:9]}\n")
    with pytest.raises(build.BuildError, match=f"does not vendor llama.cpp {LLAMA_CPP_COMMIT[:9]}"):
        build._check_vendored_commit(server, tmp_path)

    (tmp_path / "CHANGELOG.md").write_text(
        f"## [{server.package_version}]\n\n- feat: update llama.cpp to ggml-org/llama.cpp@{LLAMA_CPP_COMMIT[:9]}\n")
    build._check_vendored_commit(server, tmp_path)
