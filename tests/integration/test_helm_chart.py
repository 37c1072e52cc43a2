"""The Helm chart helm/atp, rendered by the real Helm engine and checked manifest by manifest.

The engine is the ``helm-python-sdk`` package (import name ``helm_python``: Helm's Go SDK as a
library, offline, no cluster), else a ``helm`` binary on PATH (``helm template``). With
neither, the tests skip with a reason.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from atp_service.config import parse_config

pytestmark = pytest.mark.integration

try:
    import helm_python
except ImportError:  # pragma: no cover - depends on the machine
    helm_python = None

CHART = Path(__file__).resolve().parents[2] / "helm" / "atp"
HELM_BIN = shutil.which("helm")
RELEASE = "shop"
NAMESPACE = "inventory"
API = f"{RELEASE}-atp-api"
CONSUMER = f"{RELEASE}-atp-consumer"
ALIVE_FILE = "/tmp/atp-consumer-alive"
SHA_A = "a" * 64
SHA_B = "0123456789abcdef" * 4

Doc = dict[str, Any]


class RenderError(Exception):
    """The chart refused the values (a template `fail`/`required`) or did not render."""


@pytest.fixture(autouse=True)
def _helm_engine() -> None:
    if helm_python is None and HELM_BIN is None:
        pytest.skip("no Helm engine: pip install helm-python-sdk (or put helm on PATH)")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of user values: maps merge recursively, anything else replaces."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def render(*sets: str, values: dict[str, Any] | None = None, revision: int = 1) -> list[Doc]:
    """`helm template` with `-f values` then each `--set`; returns the parsed documents."""
    if helm_python is not None:
        merged: dict[str, Any] = dict(values or {})
        for expression in sets:
            merged = _merge(merged, helm_python.parse_set_string(expression))
        try:
            with helm_python.Chart.load(CHART) as chart:
                manifests = chart.render(
                    merged, name=RELEASE, namespace=NAMESPACE, revision=revision, is_install=True
                )
        except helm_python.HelmError as exc:
            raise RenderError(str(exc)) from exc
        texts = [text for path, text in sorted(manifests.items()) if path.endswith(".yaml")]
    else:
        assert HELM_BIN is not None
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
            yaml.safe_dump(values or {}, handle)
        try:
            cmd = [HELM_BIN, "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
            cmd += ["-f", handle.name]
            for expression in sets:
                cmd += ["--set", expression]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        finally:
            os.unlink(handle.name)
        if proc.returncode != 0:
            raise RenderError(proc.stderr)
        texts = [proc.stdout]
    return [doc for text in texts for doc in yaml.safe_load_all(text) if doc]


def find(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def pod_spec(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def main_container(workload: Doc) -> Doc:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1
    container: Doc = containers[0]
    return container


def all_containers(workload: Doc) -> list[Doc]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_of(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}


def plain_env(container: Doc) -> dict[str, str]:
    return {name: e["value"] for name, e in env_of(container).items() if "value" in e}


def argv(container: Doc) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def config_toml(docs: list[Doc]) -> str:
    text: str = one(docs, "ConfigMap", f"{RELEASE}-atp-config")["data"]["atp.toml"]
    return text


def chart_values() -> Doc:
    values: Doc = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    return values


def workloads(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["kind"] in ("Deployment", "Job")]


def selected(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def assemble_config(docs: list[Doc], workload: Doc, tmp: Path, secrets: dict[str, Doc]) -> Path:
    """Does what the kubelet and the pod's init container do, on local directories.

    Each volume of the pod becomes a directory under ``tmp``; projected ConfigMap and Secret
    items are written into theirs; the init container's shell script runs with its mount
    paths mapped to those directories. Returns the local path of the main container's
    ATP_CONFIG.
    """
    spec = pod_spec(workload)
    volume_dirs: dict[str, Path] = {}
    for volume in spec["volumes"]:
        directory = tmp / volume["name"]
        directory.mkdir()
        volume_dirs[volume["name"]] = directory
        for source in volume.get("projected", {}).get("sources", []):
            if "configMap" in source:
                ref = source["configMap"]
                data = one(docs, "ConfigMap", ref["name"])["data"]
                decode = str
            else:
                ref = source["secret"]
                data = secrets[ref["name"]]["data"]
                decode = lambda v: base64.b64decode(v).decode()  # noqa: E731
            for item in ref["items"]:
                (directory / item["path"]).write_text(decode(data[item["key"]]), encoding="utf-8")

    def local(container: Doc, path: str) -> Path:
        mounts = sorted(container["volumeMounts"], key=lambda m: -len(m["mountPath"]))
        for mount in mounts:
            prefix = mount["mountPath"].rstrip("/") + "/"
            if path.startswith(prefix):
                return volume_dirs[mount["name"]] / path[len(prefix) :]
        raise AssertionError(f"{path} is on no volume of container {container['name']}")

    (init,) = [c for c in spec["initContainers"] if c["name"] == "config"]
    shell, flags, script = init["command"]
    assert shell == "/bin/sh"
    mounts = sorted(init["volumeMounts"], key=lambda m: -len(m["mountPath"]))
    by_path = {m["mountPath"]: str(volume_dirs[m["name"]]) for m in mounts}
    pattern = "|".join(re.escape(m["mountPath"]) for m in mounts)
    script = re.sub(rf"({pattern})(?=/|\s|$)", lambda m: by_path[m.group(1)], script)
    subprocess.run([shell, flags, script], check=True, timeout=10)
    return local(main_container(workload), plain_env(main_container(workload))["ATP_CONFIG"])


# ---------------------------------------------------------------------------- the chart itself


def test_chart_lints_clean_in_strict_mode() -> None:
    if helm_python is not None:
        report = helm_python.lint(CHART, strict=True)
        assert report["errors"] == []
        assert [m for m in report["messages"] if m["severity"] >= 2] == []
    else:
        assert HELM_BIN is not None
        subprocess.run([HELM_BIN, "lint", "--strict", str(CHART)], check=True, timeout=60)


def test_default_render_has_the_expected_objects() -> None:
    docs = render()
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert kinds == sorted(
        [
            ("ConfigMap", f"{RELEASE}-atp-config"),
            ("Deployment", API),
            ("Deployment", CONSUMER),
            ("HorizontalPodAutoscaler", API),
            ("PersistentVolumeClaim", f"{RELEASE}-atp-ledger"),
            ("PodDisruptionBudget", API),
            ("PodDisruptionBudget", CONSUMER),
            ("Secret", f"{RELEASE}-atp-api-keys"),
            ("Service", API),
        ]
    )
    for doc in docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


# ---------------------------------------------------------------------------- pods


@pytest.mark.parametrize(
    "sets",
    [
        pytest.param((), id="defaults"),
        pytest.param(("rebuild.enabled=true", "ledger.persistence.enabled=false"), id="rebuild"),
    ],
)
def test_every_container_has_resources_and_a_locked_down_security_context(
    sets: tuple[str, ...],
) -> None:
    docs = render(*sets)
    assert len(workloads(docs)) == (3 if sets else 2)
    for workload in workloads(docs):
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for container in all_containers(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            for part in ("requests", "limits"):
                assert set(container["resources"][part]) >= {"cpu", "memory"}, where
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True, where
            assert sc["runAsUser"] == 10001, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in sc["capabilities"], where
            tmp_mounts = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert len(tmp_mounts) == 1, where
            assert tmp_mounts[0]["name"] in tmp_volumes, f"{where}: /tmp is not an emptyDir"


def test_every_deployment_container_has_liveness_and_readiness_probes() -> None:
    docs = render()
    deployments = find(docs, "Deployment")
    assert {d["metadata"]["name"] for d in deployments} == {API, CONSUMER}
    for deployment in deployments:
        for container in pod_spec(deployment)["containers"]:
            assert container.get("livenessProbe"), container["name"]
            assert container.get("readinessProbe"), container["name"]


def test_api_runs_serve_with_http_probes_on_port_8000() -> None:
    api = one(render(), "Deployment", API)
    container = main_container(api)
    assert argv(container) == ["atp", "serve", "--host", "0.0.0.0", "--port", "8000"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        http = container[probe]["httpGet"]
        assert http["path"] == path
        assert ports.get(http["port"], http["port"]) == 8000


def test_consumer_runs_consume_with_a_long_enough_grace_period() -> None:
    consumer = one(render(), "Deployment", CONSUMER)
    assert argv(main_container(consumer)) == ["atp", "consume"]
    assert pod_spec(consumer)["terminationGracePeriodSeconds"] >= 30
    assert consumer["spec"]["strategy"]["type"] == "Recreate"


@pytest.mark.parametrize("probe", ["livenessProbe", "readinessProbe", "startupProbe"])
def test_consumer_exec_probes_really_check_the_heartbeat_file_age(
    probe: str, tmp_path: Path
) -> None:
    container = main_container(one(render(), "Deployment", CONSUMER))
    command = container[probe]["exec"]["command"]
    assert command[0] == "python"
    assert any(ALIVE_FILE in part for part in command)
    heartbeat = tmp_path / "atp-consumer-alive"
    local = [sys.executable, *(part.replace(ALIVE_FILE, str(heartbeat)) for part in command[1:])]

    def exit_code() -> int:
        return subprocess.run(local, capture_output=True, timeout=10, check=False).returncode

    assert exit_code() != 0, "a missing heartbeat file must fail the probe"
    heartbeat.touch()
    assert exit_code() == 0, "a fresh heartbeat must pass"
    stale = time.time() - 31
    os.utime(heartbeat, (stale, stale))
    assert exit_code() != 0, "a heartbeat older than 30 s must fail"


def test_consumer_replicas_comment_warns_about_partitions() -> None:
    text = (CHART / "values.yaml").read_text(encoding="utf-8")
    consumer_block = text.split("\nconsumer:\n", 1)[1].split("\n  replicas:", 1)[0]
    assert "partition count sit idle" in " ".join(consumer_block.split())


def test_redis_and_kafka_reach_every_container_as_env() -> None:
    docs = render(
        "redis.url=redis://cache.prod:6380/2",
        "kafka.bootstrap=k1:9092\\,k2:9092",
        "rebuild.enabled=true",
    )
    for workload in workloads(docs):
        env = plain_env(main_container(workload))
        assert env["ATP_REDIS_URL"] == "redis://cache.prod:6380/2"
        assert env["ATP_KAFKA_BOOTSTRAP"] == "k1:9092,k2:9092"
        assert env["ATP_CONFIG"] == "/etc/atp/atp.toml"
    assert "ATP_LEDGER_DIR" in plain_env(main_container(one(docs, "Deployment", CONSUMER)))


def test_redis_url_can_come_from_a_secret() -> None:
    docs = render("redis.existingSecret=redis-creds", "redis.existingSecretKey=url")
    for workload in workloads(docs):
        ref = env_of(main_container(workload))["ATP_REDIS_URL"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "redis-creds", "key": "url"}
    assert "redis://" not in config_toml(docs)


# ---------------------------------------------------------------------------- atp.toml


def test_configmap_atp_toml_parses_to_the_channels_in_values() -> None:
    settings = parse_config(config_toml(render()), {})
    expected = chart_values()
    assert [c.name for c in settings.channels] == [c["name"] for c in expected["channels"]]
    for channel, want in zip(settings.channels, expected["channels"], strict=True):
        assert channel.priority == want["priority"]
        assert list(channel.locations) == want["locations"]
        assert channel.safety_stock == want["safety_stock"]
        assert channel.inbound_horizon_days == want["inbound_horizon_days"]
    assert settings.topics.dead_letter == expected["topics"]["dead_letter"]
    assert list(settings.statuses.sellable) == expected["statuses"]["sellable"]
    assert settings.redis.url == expected["redis"]["url"]
    assert settings.kafka.bootstrap == expected["kafka"]["bootstrap"]
    assert settings.api_keys == ()


def test_custom_channel_list_and_tuning_render_to_a_valid_config() -> None:
    channels = [
        {"name": "store_pickup", "priority": 1, "locations": ["ST-01"], "safety_stock": 1},
        {
            "name": "b2b",
            "priority": 3,
            "locations": ["DC-WEST", "DC-EAST", 'Odd "loc" é'],
            "inbound_horizon_days": 30,
            "safety_stock_overrides": {"SKU-1": 4, 'sku with \\ and "': 0},
        },
    ]
    values = {
        "channels": channels,
        "statuses": {"sellable": ["available", "returned"]},
        "tuning": {"consumer": {"batch_size": 100}, "api": {"cache_staleness_ms": 0}},
    }
    settings = parse_config(config_toml(render(values=values)), {})
    assert [c.name for c in settings.channels] == ["store_pickup", "b2b"]
    pickup, b2b = settings.channels
    assert (pickup.priority, pickup.locations, pickup.safety_stock) == (1, ("ST-01",), 1)
    assert pickup.inbound_horizon_days == 14  # not set in values: the service's default
    assert b2b.locations == ("DC-WEST", "DC-EAST", 'Odd "loc" é')
    assert b2b.inbound_horizon_days == 30
    assert b2b.safety_stock_overrides == {"SKU-1": 4, 'sku with \\ and "': 0}
    assert settings.statuses.sellable == ("available", "returned")
    assert settings.consumer.batch_size == 100
    assert settings.api.cache_staleness_ms == 0


def test_buffers_kits_and_capacities_render_to_the_config() -> None:
    channels = [
        {"name": "feed", "priority": 1, "locations": ["DC-1"], "safety_stock_percent": 20,
         "min_available": 2, "max_available": 40, "max_order_quantity": 5,
         "low_stock_threshold": 3},
    ]  # fmt: skip
    values = {
        "channels": channels,
        "kits": [{"sku": 'GIFT "1"', "components": [{"sku": "MUG-1", "quantity": 2},
                                                    {"sku": "TRAY-1", "quantity": 1}]}],
        "locations": [{"name": "DC-1", "daily_capacity_units": 500}],
    }  # fmt: skip
    settings = parse_config(config_toml(render(values=values)), {})
    [feed] = settings.channels
    assert (feed.safety_stock_percent, feed.min_available, feed.max_available) == (20, 2, 40)
    assert (feed.max_order_quantity, feed.low_stock_threshold) == (5, 3)
    [kit] = settings.kits
    assert kit.sku == 'GIFT "1"'
    assert [(c.sku, c.quantity) for c in kit.components] == [("MUG-1", 2), ("TRAY-1", 1)]
    assert [(c.name, c.daily_capacity_units) for c in settings.capacities] == [("DC-1", 500)]


def test_set_on_a_channel_changes_the_config_and_rolls_the_pods() -> None:
    default = render()
    channels = chart_values()["channels"]
    channels[1]["safety_stock"] = 9
    changed = render(values={"channels": channels})
    assert parse_config(config_toml(changed), {}).channels[1].safety_stock == 9
    for name in (API, CONSUMER):
        before = one(default, "Deployment", name)["spec"]["template"]["metadata"]["annotations"]
        after = one(changed, "Deployment", name)["spec"]["template"]["metadata"]["annotations"]
        assert before["checksum/config"] != after["checksum/config"]


def test_pods_assemble_atp_toml_from_configmap_and_key_secret(tmp_path: Path) -> None:
    keys = [
        {"name": "storefront", "sha256": SHA_A, "scopes": ["availability:read"]},
        {"name": "router", "sha256": SHA_B.upper(), "scopes": ["allocations:write", "admin"]},
    ]
    docs = render(
        "redis.url=redis://from-env:6379/1",
        "rebuild.enabled=true",
        values={"apiKeys": {"keys": keys}},
    )
    secret = one(docs, "Secret", f"{RELEASE}-atp-api-keys")
    assert SHA_A not in config_toml(docs), "key hashes belong in the Secret, not the ConfigMap"
    for workload in workloads(docs):
        workdir = tmp_path / workload["metadata"]["name"]
        workdir.mkdir()
        config_file = assemble_config(docs, workload, workdir, {secret["metadata"]["name"]: secret})
        env = plain_env(main_container(workload))
        settings = parse_config(config_file.read_text(encoding="utf-8"), env)
        assert [(k.name, k.sha256, k.scopes) for k in settings.api_keys] == [
            ("storefront", SHA_A, ("availability:read",)),
            ("router", SHA_B, ("allocations:write", "admin")),
        ]
        assert [c.name for c in settings.channels] == ["web", "marketplace"]
        assert settings.redis.url == "redis://from-env:6379/1"


def test_existing_api_key_secret_replaces_the_charts_secret(tmp_path: Path) -> None:
    docs = render("apiKeys.existingSecret=foo", "apiKeys.existingSecretKey=keys.toml")
    assert find(docs, "Secret") == []
    external = {
        "data": {
            "keys.toml": base64.b64encode(
                f'[[api_keys]]\nname = "ops"\nsha256 = "{SHA_B}"\nscopes = ["admin"]\n'.encode()
            ).decode()
        }
    }
    for workload in workloads(docs):
        template = workload["spec"]["template"]
        assert "checksum/api-keys" not in template["metadata"]["annotations"]
        (projected,) = [v for v in template["spec"]["volumes"] if "projected" in v]
        (source,) = [s["secret"] for s in projected["projected"]["sources"] if "secret" in s]
        assert source["name"] == "foo"
        assert source["items"] == [{"key": "keys.toml", "path": "api-keys.toml"}]
        workdir = tmp_path / workload["metadata"]["name"]
        workdir.mkdir()
        config_file = assemble_config(docs, workload, workdir, {"foo": external})
        settings = parse_config(config_file.read_text(encoding="utf-8"), {})
        assert [k.name for k in settings.api_keys] == ["ops"]


def test_values_for_a_redis_cluster_and_several_consumers_render_a_valid_config() -> None:
    values = {
        "redis": {"url": "redis://redis-cluster-0:6379/0", "cluster": True},
        "consumer": {"replicas": 3},
        "ledger": {"persistence": {"accessModes": ["ReadWriteMany"]}},
    }
    documents = render(values=values)
    settings = parse_config(config_toml(documents), {})
    assert (settings.redis.cluster, settings.redis.shard_count) == (True, 16)
    consumers = [
        d for d in documents if d["kind"] == "Deployment" and "consumer" in d["metadata"]["name"]
    ]
    assert [d["spec"]["replicas"] for d in consumers] == [3]
    claims = [d for d in documents if d["kind"] == "PersistentVolumeClaim"]
    assert [c["spec"]["accessModes"] for c in claims] == [["ReadWriteMany"]]


def test_several_consumers_on_a_volume_only_one_node_mounts_fail_the_render() -> None:
    for ledger in ({}, {"persistence": {"enabled": False}}):
        with pytest.raises(RenderError, match="one shared ledger"):
            render(values={"consumer": {"replicas": 2}, "ledger": ledger})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        pytest.param(
            {"consumer": {"terminationGracePeriodSeconds": 10}}, "at least 30", id="grace"
        ),
        pytest.param({"channels": []}, "at least one channel", id="no-channels"),
        pytest.param({"channels": [None, {"name": "b2b"}]}, "must be a table", id="sparse-set"),
        pytest.param(
            {"channels": [{"name": "web", "priority": 1, "locations": ["A"], "safetyStock": 5}]},
            "unknown key `safetyStock`",
            id="unknown-channel-key",
        ),
        pytest.param(
            {"channels": [{"name": "web", "priority": 1, "locations": []}]},
            "locations",
            id="no-locations",
        ),
        pytest.param(
            {"channels": [{"name": "w", "priority": 1, "locations": ["A"]}] * 2},
            "duplicate channel",
            id="duplicate-channel",
        ),
        pytest.param(
            {"apiKeys": {"keys": [{"name": "k", "sha256": "abc", "scopes": ["admin"]}]}},
            "sha256",
            id="bad-sha256",
        ),
        pytest.param(
            {"apiKeys": {"keys": [{"name": "k", "sha256": SHA_A, "scopes": ["root"]}]}},
            "unknown scope",
            id="bad-scope",
        ),
    ],
)
def test_values_the_service_would_refuse_fail_the_render(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(RenderError, match=message):
        render(values=values)


# ---------------------------------------------------------------------------- scaling, PDBs, Service


def test_api_replicas_feed_the_hpa_or_the_deployment() -> None:
    docs = render("api.replicas=5")
    assert "replicas" not in one(docs, "Deployment", API)["spec"], "the HPA owns replicas"
    assert one(docs, "HorizontalPodAutoscaler", API)["spec"]["minReplicas"] == 5

    docs = render("api.replicas=5", "api.autoscaling.enabled=false")
    assert one(docs, "Deployment", API)["spec"]["replicas"] == 5
    assert find(docs, "HorizontalPodAutoscaler") == []

    docs = render("consumer.replicas=3", "ledger.persistence.accessModes={ReadWriteMany}")
    assert one(docs, "Deployment", CONSUMER)["spec"]["replicas"] == 3


def test_hpa_targets_the_api_deployment_on_cpu() -> None:
    docs = render("api.autoscaling.maxReplicas=7")
    hpa = one(docs, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert target == {"apiVersion": "apps/v1", "kind": "Deployment", "name": API}
    assert one(docs, "Deployment", API)["metadata"]["name"] == target["name"]
    assert hpa["spec"]["maxReplicas"] == 7
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"


def test_each_pdb_selects_exactly_its_own_pods() -> None:
    docs = render()
    pdbs = {p["metadata"]["name"]: p for p in find(docs, "PodDisruptionBudget")}
    assert set(pdbs) == {API, CONSUMER}
    labels = {
        name: one(docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        for name in (API, CONSUMER)
    }
    for name, pdb in pdbs.items():
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert {n for n, pod_labels in labels.items() if selected(selector, pod_labels)} == {name}
    docs = render("pdb.consumer.minAvailable=1")
    spec = one(docs, "PodDisruptionBudget", CONSUMER)["spec"]
    assert spec["minAvailable"] == 1
    assert "maxUnavailable" not in spec


def test_service_exposes_the_api_pods_on_their_http_port() -> None:
    docs = render()
    service = one(docs, "Service", API)
    for name, expected in ((API, True), (CONSUMER, False)):
        pod_labels = one(docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert selected(service["spec"]["selector"], pod_labels) is expected
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "http"
    assert port["name"] == "http"


def test_service_monitor_is_optional_and_scrapes_metrics() -> None:
    assert find(render(), "ServiceMonitor") == []
    docs = render("serviceMonitor.enabled=true", "serviceMonitor.labels.release=prom")
    monitor = one(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    service = one(docs, "Service", API)
    assert selected(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


# ---------------------------------------------------------------------------- ledger and rebuild


def test_rebuild_job_is_optional_and_runs_atp_rebuild_on_the_ledger() -> None:
    assert find(render(), "Job") == []
    docs = render("rebuild.enabled=true", revision=4)
    job = one(docs, "Job")
    revision = 4 if helm_python is not None else 1  # `helm template` always renders revision 1
    assert job["metadata"]["name"].endswith(f"-{revision}"), "a new Job per release revision"
    container = main_container(job)
    assert argv(container) == ["atp", "rebuild"]
    assert pod_spec(job)["restartPolicy"] == "Never"
    consumer_container = main_container(one(docs, "Deployment", CONSUMER))
    ledger_dir = plain_env(consumer_container)["ATP_LEDGER_DIR"]
    assert plain_env(container)["ATP_LEDGER_DIR"] == ledger_dir
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for w in (job, one(docs, "Deployment", CONSUMER))
        for v in pod_spec(w)["volumes"]
        if v["name"] == "ledger"
    }
    assert claims == {f"{RELEASE}-atp-ledger"}, "the Job rebuilds from the consumer's ledger"
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {ledger_dir, "/tmp"}


def test_ledger_volume_follows_persistence_values() -> None:
    docs = render("ledger.persistence.existingClaim=my-ledger")
    assert find(docs, "PersistentVolumeClaim") == []
    volumes = {v["name"]: v for v in pod_spec(one(docs, "Deployment", CONSUMER))["volumes"]}
    assert volumes["ledger"]["persistentVolumeClaim"]["claimName"] == "my-ledger"

    docs = render("ledger.persistence.enabled=false")
    assert find(docs, "PersistentVolumeClaim") == []
    volumes = {v["name"]: v for v in pod_spec(one(docs, "Deployment", CONSUMER))["volumes"]}
    assert "emptyDir" in volumes["ledger"]
