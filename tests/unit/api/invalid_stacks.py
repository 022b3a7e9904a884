"""Invalid SovereignStacks, one rule broken each: the table both the offline validator
(tests/unit/api/test_api_offline_validation.py) and the real apiserver
(tests/integration/test_api_cluster.py)
must reject, each naming the offending field.

Each case starts from the full sample, changes its spec, and lists the words both error
outputs must contain: the field path, and for rules the apiserver reports on a whole list
(CEL has no list index), the field name inside the entry.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SAMPLES = Path(__file__).resolve().parents[3] / "manifests" / "samples"


def full_sample() -> dict[str, Any]:
    return yaml.safe_load((SAMPLES / "full.yaml").read_text())


@dataclass(frozen=True)
class Case:
    id: str
    change: Callable[[dict[str, Any]], Any]
    names: tuple[str, ...]

    def document(self) -> dict[str, Any]:
        document = copy.deepcopy(full_sample())
        self.change(document["spec"])
        document["metadata"] = {"name": f"invalid-{self.id}"}
        return document


def set_value(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change setting ``path`` (dotted, numbers index lists) below spec to ``value``."""

    def change(spec: dict[str, Any]) -> None:
        *parents, last = [int(part) if part.isdigit() else part for part in path.split(".")]
        node: Any = spec
        for part in parents:
            node = node[part]
        node[last] = value

    return change


def delete_value(path: str) -> Callable[[dict[str, Any]], None]:
    def change(spec: dict[str, Any]) -> None:
        *parents, last = [int(part) if part.isdigit() else part for part in path.split(".")]
        node: Any = spec
        for part in parents:
            node = node[part]
        del node[last]

    return change


def _duplicate(list_name: str) -> Callable[[dict[str, Any]], None]:
    def change(spec: dict[str, Any]) -> None:
        spec[list_name][1] = {**spec[list_name][1], "name": spec[list_name][0]["name"]}

    return change


#: A CPU pool and a llama-cpp model on it, added to the full sample by ``with_cpu_model``: the
#: model is spec.models[2], the pool spec.nodePools[2].
CPU_POOL = {"name": "cpu", "provisioner": "Existing", "existing": {"nodeSelector": {"sovereign.ai/rack": "doha-2"}}}
CPU_MODEL = {
    "name": "tiny", "engine": "llama-cpp", "model": "tiny-llama", "nodePool": "cpu",
    "source": {"dataStore": "corpus", "path": "models/tiny/tiny.gguf"}, "resources": {"cpu": "2", "memory": "2Gi"},
}  # fmt: skip


def with_cpu_model(*, pool: dict[str, Any] | None = None, **fields: Any) -> Callable[[dict[str, Any]], None]:
    """A change adding the CPU pool (with ``pool``'s fields) and the llama-cpp model (with
    ``fields``; None removes a field) to the spec."""

    def change(spec: dict[str, Any]) -> None:
        spec["nodePools"].append({**CPU_POOL, **(pool or {})})
        model = {**CPU_MODEL, **fields}
        spec["models"].append({key: value for key, value in model.items() if value is not None})

    return change


def both(*changes: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], None]:
    def change(spec: dict[str, Any]) -> None:
        for one in changes:
            one(spec)

    return change


EVALUATION = {"dataset": {"dataStore": "corpus", "path": "evals/chat-ar.jsonl"},
              "scorers": [{"exactMatch": {}}], "threshold": 0.8}


def with_evaluation(**fields: Any) -> Callable[[dict[str, Any]], None]:
    """A change giving the first model (chat) an evaluation, with ``fields`` replacing its own."""
    return set_value("models.0.evaluation", {**copy.deepcopy(EVALUATION), **fields})


CASES = [
    Case("missing-residency", delete_value("residency"), ("spec.residency",)),
    Case("missing-jurisdiction", delete_value("residency.jurisdiction"), ("spec.residency.jurisdiction",)),
    Case("lowercase-jurisdiction", set_value("residency.jurisdiction", "qa"), ("spec.residency.jurisdiction",)),
    Case("empty-regions", set_value("residency.regions", []), ("spec.residency.regions",)),
    Case("duplicate-region", set_value("residency.regions", ["me-central-1", "me-central-1"]),
         ("spec.residency.regions[1]",)),
    Case("unknown-enforcement", set_value("residency.enforcement", "Block"), ("spec.residency.enforcement",)),
    Case("bad-egress-cidr", set_value("residency.egress.allowCIDRs", ["10.0.0.0/33"]),
         ("spec.residency.egress.allowCIDRs[0]",)),
    Case("model-undeclared-node-pool", set_value("models.0.nodePool", "h200"), ("spec.models", "nodePool", "h200")),
    Case("model-undeclared-store", set_value("models.0.source.dataStore", "elsewhere"),
         ("spec.models", "source.dataStore", "elsewhere")),
    Case("application-undeclared-model", set_value("applications.0.models", ["chat", "translate"]),
         ("spec.applications", "models", "translate")),
    Case("application-undeclared-store", set_value("applications.1.dataStores", ["archive"]),
         ("spec.applications", "dataStores", "archive")),
    Case("duplicate-model-names", _duplicate("models"), ("spec.models[1]",)),
    Case("duplicate-node-pool-names", _duplicate("nodePools"), ("spec.nodePools[1]",)),
    Case("duplicate-store-names", _duplicate("dataStores"), ("spec.dataStores[1]",)),
    Case("duplicate-env-names", set_value("applications.0.env.1.name", "LOG_LEVEL"), ("spec.applications[0].env[1]",)),
    Case("negative-replicas", set_value("models.0.replicas", -1), ("spec.models[0].replicas",)),
    Case("replicas-as-string", set_value("applications.0.replicas", "2"), ("spec.applications[0].replicas",)),
    Case("gpus-per-replica-not-power-of-two", set_value("models.0.gpusPerReplica", 3), ("spec.models[0].gpusPerReplica",)),
    Case("gpus-per-replica-above-eight", set_value("models.0.gpusPerReplica", 16), ("spec.models[0].gpusPerReplica",)),
    Case("gpus-per-replica-above-pool", set_value("nodePools.0.gpu.perNode", 2), ("spec.models", "gpusPerReplica")),
    Case("zero-gpus-per-node", set_value("nodePools.0.gpu.perNode", 0), ("spec.nodePools[0].gpu.perNode",)),
    Case("volume-size-not-a-quantity", set_value("dataStores.1.volume.size", "200GB"), ("spec.dataStores[1].volume.size",)),
    Case("volume-size-negative", set_value("dataStores.1.volume.size", "-5Gi"), ("spec.dataStores[1].volume.size",)),
    Case("cache-size-words", set_value("models.0.cache.size", "plenty"), ("spec.models[0].cache.size",)),
    Case("weights-throughput-below-1mi", set_value("models.0.weightsThroughput", "500Ki"),
         ("spec.models[0].weightsThroughput", "at least 1Mi")),
    Case("weights-throughput-words", set_value("models.0.weightsThroughput", "fast"),
         ("spec.models[0].weightsThroughput", "such as 50Mi")),
    Case("resource-request-not-a-quantity", set_value("applications.0.resources.requests.cpu", "half"),
         ("spec.applications[0].resources.requests",)),
    Case("store-with-s3-and-volume", set_value("dataStores.0.volume", {"size": "1Gi"}), ("spec.dataStores[0]", "s3 or volume")),
    Case("store-with-neither", delete_value("dataStores.1.volume"), ("spec.dataStores[1]", "s3 or volume")),
    Case("karpenter-pool-without-settings", delete_value("nodePools.0.karpenter"), ("spec.nodePools[0].karpenter",)),
    Case("existing-pool-with-karpenter-settings", set_value("nodePools.1.karpenter", {"nodeClassRef": {"name": "x"}}),
         ("spec.nodePools[1].karpenter",)),
    Case("limits-below-one-node", set_value("nodePools.0.limits.gpus", 4), ("spec.nodePools[0].limits.gpus",)),
    Case("s3-region-outside-residency", set_value("dataStores.0.s3.region", "eu-west-1"),
         ("spec.dataStores", "s3.region", "eu-west-1")),
    Case("bad-bucket-name", set_value("dataStores.0.s3.bucket", "QA_Corpus"), ("spec.dataStores[0].s3.bucket",)),
    Case("bad-model-name", set_value("models.1.name", "Embed_1"), ("spec.models[1].name",)),
    Case("source-path-escapes", set_value("models.0.source.path", "../../etc"), ("spec.models[0].source.path",)),
    Case("autoscaling-min-above-max", set_value("models.0.autoscaling.minReplicas", 6),
         ("spec.models[0].autoscaling.minReplicas",)),
    Case("autoscaling-to-zero-cannot-wake", set_value("models.0.autoscaling.minReplicas", 0),
         ("spec.models[0].autoscaling.minReplicas", "cannot wake up", "set autoscaling.minReplicas to 1")),
    Case("extra-args-owned-flag", set_value("models.0.extraArgs", ["--tensor-parallel-size=2"]),
         ("spec.models[0].extraArgs",)),
    Case("unknown-provisioner", set_value("nodePools.1.provisioner", "Manual"), ("spec.nodePools[1].provisioner",)),
    Case("unknown-field", set_value("models.0.gpus", 4), ("spec.models[0].gpus",)),
    Case("unknown-capacity-type", set_value("nodePools.0.karpenter.capacityTypes", ["preemptible"]),
         ("spec.nodePools[0].karpenter.capacityTypes[0]",)),
    Case("karpenter-gpu-pool-unpinned", delete_value("nodePools.0.karpenter.instanceTypes"),
         ("spec.nodePools[0].karpenter", "gpuName", "instanceTypes")),
    Case("karpenter-gpu-name-of-an-unknown-provider",
         both(set_value("nodePools.0.karpenter.gpuName", "h100"),
              set_value("nodePools.0.karpenter.nodeClassRef.group", "karpenter.example.com")),
         ("spec.nodePools[0].karpenter.gpuName", "karpenter.k8s.aws", "instanceTypes")),
    Case("port-out-of-range", set_value("applications.0.port", 70000), ("spec.applications[0].port",)),
    Case("application-named-like-a-model", set_value("applications.0.name", "chat"),
         ("spec.applications", "chat", "name of a model")),
    # Engines: each refused with the field and the fix.
    Case("unknown-engine", set_value("models.0.engine", "tgi"), ("spec.models[0].engine", "llama-cpp")),
    Case("llama-cpp-asks-for-gpus", with_cpu_model(gpusPerReplica=1),
         ("spec.models[2].gpusPerReplica", "llama-cpp runs on CPU")),
    Case("llama-cpp-on-a-gpu-pool", with_cpu_model(nodePool="h100"), ("spec.models", "nodePool", "llama-cpp")),
    Case("vllm-on-a-cpu-pool", both(with_cpu_model(), set_value("models.1.nodePool", "cpu")),
         ("spec.models", "nodePool", "vllm")),
    Case("vllm-with-zero-gpus", set_value("models.0.gpusPerReplica", 0), ("spec.models[0].gpusPerReplica", "vllm")),
    Case("llama-cpp-with-autoscaling", with_cpu_model(autoscaling={"maxReplicas": 2}),
         ("spec.models[2].autoscaling", "engine vllm")),
    Case("llama-cpp-without-resources", with_cpu_model(resources=None), ("spec.models[2].resources", "resources.cpu")),
    Case("llama-cpp-path-not-a-gguf-file", with_cpu_model(source={"dataStore": "corpus", "path": "models/tiny/"}),
         ("spec.models[2].source.path", ".gguf")),
    Case("llama-cpp-hub-download-flag", with_cpu_model(extraArgs=["--hf-repo", "someone/model"]),
         ("spec.models[2].extraArgs", "--hf-repo")),
    Case("llama-cpp-owned-flag", with_cpu_model(extraArgs=["--port", "9000"]), ("spec.models[2].extraArgs", "--port")),
    Case("llama-cpp-flag-value-after-equals", with_cpu_model(extraArgs=["--ctx-size=4096"]),
         ("spec.models[2].extraArgs", "two entries")),
    Case("llama-cpp-cache-storage-class", with_cpu_model(cache={"storageClassName": "regional-ssd"}),
         ("spec.models[2].cache.storageClassName", "emptyDir")),
    Case("llama-cpp-per-node-cache-with-storage-class",
         with_cpu_model(cache={"layout": "PerNode", "storageClassName": "regional-ssd"}),
         ("spec.models[2].cache.storageClassName", "SharedVolume")),
    # Model cache and streaming: each refused with the field and the fix.
    Case("unknown-cache-layout", set_value("models.0.cache.layout", "Everywhere"), ("spec.models[0].cache.layout",)),
    Case("per-node-cache-with-storage-class", set_value("models.0.cache", {"layout": "PerNode",
                                                                          "storageClassName": "regional-ssd"}),
         ("spec.models[0].cache.storageClassName", "PerNode")),
    Case("cache-of-a-volume-source", both(set_value("models.0.source.dataStore", "scratch"),
                                          set_value("models.0.cache.layout", "SharedVolume")),
         ("spec.models", "cache.layout", "scratch")),
    Case("streaming-from-a-volume-source", both(set_value("models.0.source.dataStore", "scratch"),
                                                set_value("models.0.loadFormat", "RunaiStreamer")),
         ("spec.models", "loadFormat", "scratch")),
    Case("streaming-llama-cpp", with_cpu_model(loadFormat="RunaiStreamer"),
         ("spec.models[2].loadFormat", "engine vllm")),
    Case("streaming-a-gguf-file", both(set_value("models.0.source.path", "models/qwen/qwen.gguf"),
                                       set_value("models.0.loadFormat", "RunaiStreamer")),
         ("spec.models[0].source.path", "safetensors")),
    Case("streaming-with-a-shared-cache", both(set_value("models.0.cache.layout", "SharedVolume"),
                                               set_value("models.0.loadFormat", "RunaiStreamer")),
         ("spec.models[0].cache.layout", "nothing is cached")),
    Case("streaming-with-its-own-load-format", both(set_value("models.0.loadFormat", "RunaiStreamer"),
                                                    set_value("models.0.extraArgs", ["--load-format=safetensors"])),
         ("spec.models[0].extraArgs", "loadFormat RunaiStreamer")),
    Case("unknown-load-format", set_value("models.0.loadFormat", "runai_streamer"), ("spec.models[0].loadFormat",)),
    Case("gpu-limit-on-a-cpu-pool", with_cpu_model(pool={"limits": {"gpus": 8}}),
         ("spec.nodePools[2].limits.gpus", "limits.cpu")),
    Case("empty-pool-limits", set_value("nodePools.0.limits", {}), ("spec.nodePools[0].limits", "gpus, cpu or memory")),
    # Evaluation (blue/green rollouts): each refused naming the field and the fix.
    Case("evaluation-scorer-with-two-kinds", with_evaluation(scorers=[{"exactMatch": {}, "contains": {}}]),
         ("spec.models[0].evaluation.scorers[0]", "exactly one")),
    Case("evaluation-scorer-with-no-kind", with_evaluation(scorers=[{}]),
         ("spec.models[0].evaluation.scorers[0]", "exactly one")),
    Case("evaluation-without-scorers", with_evaluation(scorers=[]), ("spec.models[0].evaluation.scorers",)),
    Case("evaluation-threshold-above-one", with_evaluation(threshold=80), ("spec.models[0].evaluation.threshold",)),
    Case("evaluation-dataset-not-jsonl", with_evaluation(dataset={"dataStore": "corpus", "path": "evals/chat.csv"}),
         ("spec.models[0].evaluation.dataset.path", ".jsonl")),
    Case("evaluation-dataset-on-a-volume", with_evaluation(dataset={"dataStore": "scratch", "path": "evals/a.jsonl"}),
         ("spec.models", "evaluation.dataset.dataStore", "S3 store")),
    Case("evaluation-dataset-undeclared-store", with_evaluation(dataset={"dataStore": "gone", "path": "evals/a.jsonl"}),
         ("spec.models", "evaluation.dataset.dataStore", "gone")),
    Case("evaluation-judge-is-itself", with_evaluation(scorers=[{"judge": {"model": "chat"}}]),
         ("spec.models", "judge", "chat")),
    Case("evaluation-judge-undeclared", with_evaluation(scorers=[{"judge": {"model": "gpt-4o"}}]),
         ("spec.models", "judge", "spec.models")),
    Case("evaluation-with-autoscaling", with_evaluation(), ("spec.models[0].autoscaling", "cannot be combined")),
    Case("evaluation-timeout-too-short", with_evaluation(timeoutSeconds=5), ("spec.models[0].evaluation.timeoutSeconds",)),
    Case("evaluation-canary-above-half", with_evaluation(canary={"weight": 60, "durationSeconds": 300}),
         ("spec.models[0].evaluation.canary.weight", "50")),
    Case("evaluation-canary-without-duration", with_evaluation(canary={"weight": 10}),
         ("spec.models[0].evaluation.canary.durationSeconds",)),
]
