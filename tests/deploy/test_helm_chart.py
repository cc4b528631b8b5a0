"""The Helm chart: renders, lints, validates against Kubernetes' schemas, and configures a
container our real CLI accepts, with probes and ports that match what the sidecar serves."""

from __future__ import annotations

import base64
import functools
import inspect
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml
from helm_python import Chart, HelmRenderError, HelmValuesError, lint

from mlflow_bluegreen.proxy.cli import ENV_PREFIX
from mlflow_bluegreen.worker.control import Supervisor

from .support import CHART, DEPLOY, cli_env_vars, dockerfile_env, parse_serve, start_serve

# The Kubernetes release the rendered objects are validated against (strict: unknown fields
# fail). The chart says kubeVersion >=1.25 and uses only APIs that are GA there.
KUBERNETES_VERSION = "1.30.0"
RELEASE = "demo"
NAMESPACE = "ml"
# Custom resources kubernetes-validate has no schema for; checked by hand below.
CUSTOM_RESOURCES = {("monitoring.coreos.com/v1", "ServiceMonitor")}
# After draining, the sidecar gives its workers this long to stop (then SIGKILLs them).
WORKER_STOP_GRACE: float = inspect.signature(Supervisor).parameters["stop_grace"].default

CI_VALUES = sorted(CHART.glob("ci/*-values.yaml"))
CASES = ["chart-defaults", *(p.name for p in CI_VALUES)]


@dataclass
class Rendered:
    name: str
    values: dict[str, Any] | None
    merged: dict[str, Any]
    manifests: dict[str, str]
    objects: list[dict[str, Any]] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.name}: expected one {kind} {name or ''}, got {found}"
        return found[0]

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment")

    @property
    def pod(self) -> dict[str, Any]:
        return self.deployment["spec"]["template"]

    @property
    def container(self) -> dict[str, Any]:
        containers = self.pod["spec"]["containers"]
        assert len(containers) == 1
        return containers[0]

    @property
    def env(self) -> dict[str, dict[str, Any]]:
        entries = self.container["env"]
        names = [e["name"] for e in entries]
        assert len(names) == len(set(names)), f"duplicate env vars: {names}"
        return {e["name"]: e for e in entries}

    def literal_env(self) -> dict[str, str]:
        return {n: e["value"] for n, e in self.env.items() if "value" in e}

    def secret_values(self, ref: dict[str, str]) -> str | None:
        """The value at a secretKeyRef when the chart renders that Secret, else None."""
        for secret in self.of_kind("Secret"):
            if secret["metadata"]["name"] == ref["name"]:
                assert ref["key"] in secret["data"], f"{ref} is not in the Secret the chart makes"
                return base64.b64decode(secret["data"][ref["key"]]).decode()
        return None

    def existing_secrets(self) -> set[str]:
        """The Secrets the values say exist already, outside the chart."""
        values = self.merged
        blocks = (
            values["tracking"]["token"],
            values["admin"]["token"],
            values["webhook"]["secret"],
        )
        return {block["existingSecret"] for block in blocks if block["existingSecret"]}

    def process_env(self) -> dict[str, str]:
        """The MLFLOW_* variables the sidecar process starts with: the image's ENV overridden by
        the pod's env, each secretKeyRef read from the Secret the chart renders, or a stand-in
        for a Secret the values name as existing."""
        env = {n: v for n, v in dockerfile_env().items() if n.startswith("MLFLOW_")}
        for name, entry in self.env.items():
            if not name.startswith("MLFLOW_"):
                continue
            if "value" in entry:
                env[name] = entry["value"]
                continue
            ref = entry["valueFrom"]["secretKeyRef"]
            value = self.secret_values(ref)
            if value is None:
                assert ref["name"] in self.existing_secrets(), (
                    f"{name} reads the Secret {ref['name']}, which neither the chart makes nor "
                    "the values name"
                )
                value = f"stand-in for {ref['name']}/{ref['key']}"
            env[name] = value
        return env

    def port(self, name: str) -> int:
        ports = {p["name"]: p["containerPort"] for p in self.container["ports"]}
        return ports[name]

    def resolve_port(self, port: int | str) -> int:
        return self.port(port) if isinstance(port, str) else port


@pytest.fixture(scope="module")
def chart() -> Iterator[Chart]:
    with Chart.load(CHART) as loaded:
        yield loaded


def _values(case: str) -> dict[str, Any] | None:
    if case == "chart-defaults":
        return None
    loaded: dict[str, Any] = yaml.safe_load((CHART / "ci" / case).read_text())
    return loaded


@pytest.fixture(scope="module", params=CASES)
def rendered(request: pytest.FixtureRequest, chart: Chart) -> Rendered:
    values = _values(request.param)
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    result = Rendered(request.param, values, chart.merge_values(values), manifests)
    for path, text in manifests.items():
        if not path.endswith((".yaml", ".yml")):
            continue
        result.objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return result


@pytest.fixture(scope="module", autouse=True)
def _schemas_read_once() -> Iterator[None]:
    """kubernetes-validate reads its (large) schema files again for every object: read each
    once while this module runs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            kubernetes_validate.utils,
            "schema_contents",
            functools.cache(kubernetes_validate.utils.schema_contents),
        )
        yield


def test_ci_values_exist() -> None:
    names = {p.name for p in CI_VALUES}
    assert {
        "default-values.yaml",
        "alias-with-secret-values.yaml",
        "hpa-servicemonitor-values.yaml",
        "existing-secret-values.yaml",
    } <= names


def test_chart_layout_is_what_helm_create_makes(chart: Chart) -> None:
    assert chart.metadata["apiVersion"] == "v2"
    assert chart.metadata["name"] == "mlflow-bluegreen"
    templates = {t["name"] for t in chart.templates}
    for name in (
        "_helpers.tpl",
        "deployment.yaml",
        "service.yaml",
        "serviceaccount.yaml",
        "NOTES.txt",
        "tests/test-connection.yaml",
    ):
        assert f"templates/{name}" in templates
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    for helper in ("name", "fullname", "labels", "selectorLabels", "serviceAccountName"):
        assert f'define "mlflow-bluegreen.{helper}"' in helpers
    assert chart.schema is not None


@pytest.mark.parametrize("case", CASES)
def test_lint_is_clean(case: str) -> None:
    report = lint(CHART, _values(case), strict=True, kube_version=f"v{KUBERNETES_VERSION}")
    assert report["errors"] == []
    # Severity 1 is informational ("icon is recommended"); 2 and up are warnings and errors.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_every_object_is_valid_kubernetes(rendered: Rendered) -> None:
    assert rendered.objects
    for obj in rendered.objects:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_RESOURCES:
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        assert obj["metadata"]["name"].startswith(rendered.deployment["metadata"]["name"]) or (
            obj["kind"] == "ServiceAccount"
        )


def test_objects_are_the_ones_the_values_ask_for(rendered: Rendered) -> None:
    values = rendered.merged
    kinds = sorted(o["kind"] for o in rendered.objects)
    assert kinds.count("Deployment") == 1
    assert kinds.count("ConfigMap") == 0
    assert bool(rendered.of_kind("HorizontalPodAutoscaler")) == values["autoscaling"]["enabled"]
    assert bool(rendered.of_kind("PodDisruptionBudget")) == values["podDisruptionBudget"]["enabled"]
    assert (
        bool(rendered.of_kind("ServiceMonitor")) == values["metrics"]["serviceMonitor"]["enabled"]
    )
    assert bool(rendered.of_kind("ServiceAccount")) == values["serviceAccount"]["create"]
    assert rendered.pod["spec"]["serviceAccountName"] == (
        values["serviceAccount"]["name"] or rendered.deployment["metadata"]["name"]
    )


def test_container_is_configured_only_through_our_env_vars(rendered: Rendered) -> None:
    container = rendered.container
    # The image's ENTRYPOINT is `mlflow-bluegreen serve`: nothing may replace or extend it.
    assert "command" not in container
    assert "args" not in container
    ours = {n for n in rendered.env if n.startswith(ENV_PREFIX)}
    assert ours - cli_env_vars() == set(), "env vars the CLI does not read"
    assert rendered.env["MLFLOW_BLUEGREEN_MODEL_URI"]["value"] == rendered.merged["model"]["uri"]


def test_the_sidecar_starts_with_the_container_environment(
    rendered: Rendered, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real `serve` command, with every check it makes before it starts the sidecar (the
    # admin port on the pod IP needs a token): this pod would run, not crash-loop.
    config = start_serve(monkeypatch, [], rendered.process_env())

    values = rendered.merged
    assert config.model_uri == values["model"]["uri"]
    assert config.host == "0.0.0.0"
    assert config.admin_host == "0.0.0.0"
    assert config.admin_token
    assert config.port == rendered.port("http") == values["ports"]["http"]
    assert config.admin_port == rendered.port("admin") == values["ports"]["admin"]
    assert config.tracking_uri == (values["tracking"]["uri"] or None)
    assert config.env_manager == values["model"]["envManager"]
    assert config.workers == values["model"]["workers"]
    assert config.timeout == values["model"]["timeout"]
    assert config.poll_interval == pytest.approx(values["model"]["pollInterval"])
    assert config.startup_timeout == pytest.approx(values["model"]["startupTimeout"])
    assert config.drain_timeout == pytest.approx(values["drainTimeout"])
    assert config.shutdown_delay == pytest.approx(values["shutdownDelay"])
    assert config.log_format == values["logging"]["format"]
    assert config.log_level.lower() == values["logging"]["level"].lower()
    assert config.access_log is values["logging"]["accessLog"]
    rollout = values["rollout"]
    assert config.linger == pytest.approx(rollout["linger"])
    assert config.allow_signature_change is rollout["allowSignatureChange"]
    assert config.swap_policy == rollout["swapPolicy"]
    assert config.spare is rollout["spare"]
    assert config.direct_start is rollout["directStart"]
    assert config.canary_percent == pytest.approx(rollout["canary"]["percent"])
    assert config.canary_seconds == pytest.approx(rollout["canary"]["seconds"])
    assert config.canary_max_error_increase == pytest.approx(rollout["canary"]["maxErrorIncrease"])
    assert config.canary_max_latency_ratio == pytest.approx(rollout["canary"]["maxLatencyRatio"])
    assert config.canary_min_requests == rollout["canary"]["minRequests"]
    assert config.shadow_percent == pytest.approx(rollout["shadow"]["percent"])
    assert config.shadow_seconds == pytest.approx(rollout["shadow"]["seconds"])
    assert config.shadow_tolerance == pytest.approx(rollout["shadow"]["tolerance"])
    assert config.shadow_min_agreement == pytest.approx(rollout["shadow"]["minAgreement"])
    assert config.auto_rollback is rollout["autoRollback"]
    webhook = values["webhook"]["secret"]
    assert bool(config.webhook_secret) == bool(webhook["existingSecret"] or webhook["value"])
    if webhook["value"] and not webhook["existingSecret"]:
        assert config.webhook_secret == webhook["value"]


def test_without_the_admin_token_the_sidecar_would_refuse_to_start(
    rendered: Rendered, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The check above is only worth something if the CLI really refuses this pod's admin
    # address without a token: the token is what makes the pod start.
    env = rendered.process_env()
    del env["MLFLOW_BLUEGREEN_ADMIN_TOKEN"]
    with pytest.raises(click.UsageError, match="--admin-token"):
        start_serve(monkeypatch, [], env)


def test_ci_values_exercise_every_judging_option(chart: Chart) -> None:
    # The sidecar-starts test above checks each value against what the CLI parsed: that is
    # only worth something for the new-version judging options if some case moves them off
    # their defaults.
    defaults = chart.merge_values(None)["rollout"]
    changed: set[str] = set()
    for case in CASES:
        rollout = chart.merge_values(_values(case))["rollout"]
        for block in ("canary", "shadow"):
            changed |= {
                f"{block}.{key}"
                for key, value in rollout[block].items()
                if value != defaults[block][key]
            }
        if rollout["autoRollback"] != defaults["autoRollback"]:
            changed.add("autoRollback")
    assert {
        "canary.maxLatencyRatio",
        "canary.minRequests",
        "shadow.percent",
        "shadow.seconds",
        "shadow.tolerance",
        "shadow.minAgreement",
        "autoRollback",
    } <= changed


@pytest.mark.parametrize(
    ("values", "env"),
    [
        (
            {
                "rollout": {
                    "linger": 120,
                    "autoRollback": True,
                    "canary": {"maxLatencyRatio": 3.5, "minRequests": 1000000},
                    "shadow": {
                        "percent": 100,
                        "seconds": 12.5,
                        "tolerance": 0.001,
                        "minAgreement": 0.95,
                    },
                }
            },
            {
                "MLFLOW_BLUEGREEN_LINGER": "120",
                "MLFLOW_BLUEGREEN_AUTO_ROLLBACK": "true",
                "MLFLOW_BLUEGREEN_CANARY_MAX_LATENCY_RATIO": "3.5",
                # An integer, never 1e+06: the CLI would refuse that.
                "MLFLOW_BLUEGREEN_CANARY_MIN_REQUESTS": "1000000",
                "MLFLOW_BLUEGREEN_SHADOW_PERCENT": "100",
                "MLFLOW_BLUEGREEN_SHADOW_SECONDS": "12.5",
                "MLFLOW_BLUEGREEN_SHADOW_TOLERANCE": "0.001",
                "MLFLOW_BLUEGREEN_SHADOW_MIN_AGREEMENT": "0.95",
            },
        ),
        (
            None,
            {
                "MLFLOW_BLUEGREEN_AUTO_ROLLBACK": "false",
                "MLFLOW_BLUEGREEN_CANARY_MAX_LATENCY_RATIO": "2",
                "MLFLOW_BLUEGREEN_CANARY_MIN_REQUESTS": "20",
                "MLFLOW_BLUEGREEN_SHADOW_PERCENT": "0",
                "MLFLOW_BLUEGREEN_SHADOW_SECONDS": "30",
                "MLFLOW_BLUEGREEN_SHADOW_TOLERANCE": "1e-06",
                "MLFLOW_BLUEGREEN_SHADOW_MIN_AGREEMENT": "0",
            },
        ),
    ],
    ids=["given", "defaults"],
)
def test_judging_values_render_as_their_env_vars(
    chart: Chart,
    monkeypatch: pytest.MonkeyPatch,
    values: dict[str, Any] | None,
    env: dict[str, str],
) -> None:
    manifest = chart.render(values, name=RELEASE)["mlflow-bluegreen/templates/deployment.yaml"]
    (container,) = yaml.safe_load(manifest)["spec"]["template"]["spec"]["containers"]
    rendered = {e["name"]: e.get("value") for e in container["env"]}
    assert {name: rendered.get(name) for name in env} == env
    # And the CLI takes each as the option it names.
    options = parse_serve(monkeypatch, [], {"MLFLOW_BLUEGREEN_MODEL_URI": "models:/m@a", **env})
    assert options["canary_min_requests"] == int(env["MLFLOW_BLUEGREEN_CANARY_MIN_REQUESTS"])
    assert options["shadow_tolerance"] == float(env["MLFLOW_BLUEGREEN_SHADOW_TOLERANCE"])
    assert options["auto_rollback"] is (env["MLFLOW_BLUEGREEN_AUTO_ROLLBACK"] == "true")


@pytest.mark.parametrize("linger", [0, 0.0, None], ids=["0", "0.0", "default"])
def test_auto_rollback_without_linger_fails_to_render(chart: Chart, linger: float | None) -> None:
    # The sidecar would exit with a usage error and the pod crash-loop: fail at install time,
    # saying which values to change.
    rollout: dict[str, Any] = {"autoRollback": True}
    if linger is not None:
        rollout["linger"] = linger
    # (`helm lint` only logs a template's `fail`: rendering, as install does, is the check.)
    with pytest.raises(HelmRenderError, match=r"rollout\.autoRollback needs rollout\.linger > 0"):
        chart.render({"rollout": rollout}, name=RELEASE)
    # Either value alone renders.
    chart.render({"rollout": {**rollout, "autoRollback": False}}, name=RELEASE)
    chart.render({"rollout": {**rollout, "linger": 0.5}}, name=RELEASE)


def test_auto_rollback_without_linger_is_what_the_cli_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The template's check mirrors the CLI's: the same values would not start the sidecar.
    env = {"MLFLOW_BLUEGREEN_AUTO_ROLLBACK": "true", "MLFLOW_BLUEGREEN_LINGER": "0"}
    with pytest.raises(click.UsageError, match="--linger"):
        start_serve(monkeypatch, ["--model-uri", "models:/m@a"], env)
    env["MLFLOW_BLUEGREEN_LINGER"] = "0.5"
    assert start_serve(monkeypatch, ["--model-uri", "models:/m@a"], env).auto_rollback is True


def test_shutdown_delay_is_passed_for_the_shutdown_delay_option(rendered: Rendered) -> None:
    value = rendered.env["MLFLOW_BLUEGREEN_SHUTDOWN_DELAY"]["value"]
    assert float(value) == pytest.approx(rendered.merged["shutdownDelay"])


def test_probes_point_at_real_endpoints(rendered: Rendered) -> None:
    container = rendered.container
    public, admin = rendered.port("http"), rendered.port("admin")
    env = rendered.literal_env()
    assert int(env["MLFLOW_BLUEGREEN_PORT"]) == public
    assert int(env["MLFLOW_BLUEGREEN_ADMIN_PORT"]) == admin

    for probe in ("startupProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/ping", probe
        assert rendered.resolve_port(get["port"]) == public, probe
    live = container["livenessProbe"]["httpGet"]
    assert live["path"] == "/livez"
    assert rendered.resolve_port(live["port"]) == admin


def test_startup_probe_allows_a_cold_start_with_an_env_build(rendered: Rendered) -> None:
    startup = rendered.container["startupProbe"]
    budget = startup["failureThreshold"] * startup["periodSeconds"]
    assert budget >= float(rendered.literal_env()["MLFLOW_BLUEGREEN_STARTUP_TIMEOUT"])


def test_termination_grace_covers_delay_drain_and_worker_stop(rendered: Rendered) -> None:
    env = rendered.literal_env()
    needed = (
        float(env["MLFLOW_BLUEGREEN_SHUTDOWN_DELAY"])
        + float(env["MLFLOW_BLUEGREEN_DRAIN_TIMEOUT"])
        + WORKER_STOP_GRACE
    )
    assert rendered.pod["spec"]["terminationGracePeriodSeconds"] >= needed


def test_termination_grace_is_computed_from_the_values(chart: Chart) -> None:
    values = {"shutdownDelay": 7.5, "drainTimeout": 120.2, "terminationGraceMarginSeconds": 0}
    manifest = chart.render(values, name=RELEASE)["mlflow-bluegreen/templates/deployment.yaml"]
    grace = yaml.safe_load(manifest)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace == math.ceil(7.5) + math.ceil(120.2) + math.ceil(WORKER_STOP_GRACE)


def test_runs_non_root_with_a_read_only_root_and_writable_scratch(rendered: Rendered) -> None:
    pod_security = rendered.pod["spec"]["securityContext"]
    security = rendered.container["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] == 10001
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 10001
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod_security["seccompProfile"]["type"] == "RuntimeDefault"

    volumes = {v["name"]: v for v in rendered.pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in rendered.container["volumeMounts"]}

    def writable(path: str) -> bool:
        return any(
            (path == mount or path.startswith(mount.rstrip("/") + "/"))
            and "emptyDir" in volumes[name]
            for mount, name in mounts.items()
        )

    env = rendered.literal_env()
    assert writable("/tmp")
    for name in ("HOME", "XDG_CACHE_HOME", "MLFLOW_ENV_ROOT"):
        assert writable(env[name]), name


def check_secret_env(
    rendered: Rendered, env_name: str, given: dict[str, str], chart_key: str
) -> str | None:
    """`env_name` comes from a Secret, never a literal: the one the values name, or else one the
    chart makes holding `given["value"]`. Returns the value when the chart made the Secret."""
    entry = rendered.env[env_name]
    assert "value" not in entry
    ref = entry["valueFrom"]["secretKeyRef"]
    if given["existingSecret"]:
        assert ref == {"name": given["existingSecret"], "key": given["existingSecretKey"]}
        assert all(s["metadata"]["name"] != ref["name"] for s in rendered.of_kind("Secret"))
        return None
    assert ref["key"] == chart_key
    value = rendered.secret_values(ref)
    assert value is not None, f"{env_name}: the chart makes no Secret {ref['name']}"
    if given["value"]:
        assert value == given["value"]
        # The value is in its Secret and nowhere else.
        others = [o for o in rendered.objects if o["metadata"]["name"] != ref["name"]]
        assert given["value"] not in json.dumps(others)
    return value


def test_tracking_token_comes_from_a_secret(rendered: Rendered) -> None:
    token = rendered.merged["tracking"]["token"]
    if not (token["existingSecret"] or token["value"]):
        assert "MLFLOW_TRACKING_TOKEN" not in rendered.env
        return
    check_secret_env(rendered, "MLFLOW_TRACKING_TOKEN", token, "token")
    if not token["existingSecret"]:
        assert "checksum/tracking-secret" in rendered.pod["metadata"]["annotations"]


def test_admin_token_is_always_given_from_a_secret(rendered: Rendered) -> None:
    # The admin port listens on the pod IP whatever the values say (probes, Prometheus).
    assert rendered.literal_env()["MLFLOW_BLUEGREEN_ADMIN_HOST"] == "0.0.0.0"
    token = rendered.merged["admin"]["token"]
    value = check_secret_env(rendered, "MLFLOW_BLUEGREEN_ADMIN_TOKEN", token, "token")
    if value is not None and not token["value"]:
        # Offline, `lookup` finds no earlier Secret: a fresh random token.
        assert len(value) >= 32
        assert (
            value not in json.dumps([o for o in rendered.objects if o["kind"] != "Secret"])
            and value not in rendered.manifests["mlflow-bluegreen/templates/NOTES.txt"]
        )
    annotations = rendered.pod["metadata"].get("annotations", {})
    # A given token restarts the pods when it changes; a random one is kept across upgrades.
    assert ("checksum/admin-secret" in annotations) == bool(
        token["value"] and not token["existingSecret"]
    )


def test_random_admin_token_differs_per_install(chart: Chart) -> None:
    def token() -> str:
        manifest = chart.render(None, name=RELEASE)["mlflow-bluegreen/templates/secret-admin.yaml"]
        return base64.b64decode(yaml.safe_load(manifest)["data"]["token"]).decode()

    assert token() != token()


def test_admin_service_only_when_asked_for(rendered: Rendered) -> None:
    values = rendered.merged
    exposed = (
        values["admin"]["service"]["enabled"] or values["metrics"]["serviceMonitor"]["enabled"]
    )
    admin_services = [
        s for s in rendered.of_kind("Service") if s["metadata"]["name"].endswith("-admin")
    ]
    assert bool(admin_services) == exposed


def test_webhook_secret_comes_from_a_secret(rendered: Rendered) -> None:
    secret = rendered.merged["webhook"]["secret"]
    if not (secret["existingSecret"] or secret["value"]):
        assert "MLFLOW_BLUEGREEN_WEBHOOK_SECRET" not in rendered.env
        assert "webhook" not in rendered.manifests["mlflow-bluegreen/templates/NOTES.txt"]
        return
    check_secret_env(rendered, "MLFLOW_BLUEGREEN_WEBHOOK_SECRET", secret, "secret")
    annotations = rendered.pod["metadata"].get("annotations", {})
    assert ("checksum/webhook-secret" in annotations) == (not secret["existingSecret"])
    assert "/webhook" in rendered.manifests["mlflow-bluegreen/templates/NOTES.txt"]


def test_services_route_to_the_named_ports(rendered: Rendered) -> None:
    pod_labels = rendered.pod["metadata"]["labels"]
    for service in rendered.of_kind("Service"):
        selector = service["spec"]["selector"]
        assert selector.items() <= pod_labels.items()
        (port,) = service["spec"]["ports"]
        admin = service["metadata"]["name"].endswith("-admin")
        assert port["targetPort"] == ("admin" if admin else "http")
        assert port["name"] == port["targetPort"]
        assert rendered.resolve_port(port["targetPort"])
    public = rendered.one("Service", rendered.deployment["metadata"]["name"])
    assert public["spec"]["ports"][0]["port"] == rendered.merged["service"]["port"]


def test_prometheus_scrapes_the_admin_port(rendered: Rendered) -> None:
    annotations = rendered.pod["metadata"].get("annotations", {})
    if rendered.merged["metrics"]["podAnnotations"]:
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == rendered.port("admin")
        assert annotations["prometheus.io/path"] == "/metrics"
    else:
        assert "prometheus.io/scrape" not in annotations
    for monitor in rendered.of_kind("ServiceMonitor"):
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] == "admin"
        assert endpoint["path"] == "/metrics"
        selected = [
            s
            for s in rendered.of_kind("Service")
            if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
        ]
        assert [s["metadata"]["name"] for s in selected] == [
            rendered.deployment["metadata"]["name"] + "-admin"
        ]
        assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
        for label, value in rendered.merged["metrics"]["serviceMonitor"]["labels"].items():
            assert monitor["metadata"]["labels"][label] == value


def test_autoscaler_and_disruption_budget_target_the_deployment(rendered: Rendered) -> None:
    deployment = rendered.deployment
    name = deployment["metadata"]["name"]
    pod_labels = rendered.pod["metadata"]["labels"]
    for hpa in rendered.of_kind("HorizontalPodAutoscaler"):
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert "replicas" not in deployment["spec"]
        metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
        if rendered.merged["autoscaling"]["inFlightRequestsPerPod"]:
            pods = metrics["Pods"]["pods"]
            assert pods["metric"]["name"] == "mlflow_bluegreen_in_flight_requests"
    if not rendered.of_kind("HorizontalPodAutoscaler"):
        assert deployment["spec"]["replicas"] == rendered.merged["replicaCount"]
    for pdb in rendered.of_kind("PodDisruptionBudget"):
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        assert ("minAvailable" in pdb["spec"]) != ("maxUnavailable" in pdb["spec"])
    # A new pod is slow to be ready: a rollout never takes an old one away first.
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_helm_test_pod_pings_the_service(rendered: Rendered) -> None:
    pods = [
        o
        for o in rendered.of_kind("Pod")
        if o["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"
    ]
    (pod,) = pods
    (container,) = pod["spec"]["containers"]
    url = container["args"][-1]
    service = rendered.one("Service", rendered.deployment["metadata"]["name"])
    port = service["spec"]["ports"][0]["port"]
    assert url == f"http://{service['metadata']['name']}:{port}/ping"
    assert container["command"] == ["wget"]


def test_notes_render(rendered: Rendered) -> None:
    notes = rendered.manifests["mlflow-bluegreen/templates/NOTES.txt"]
    assert rendered.merged["model"]["uri"] in notes
    assert "/ping" in notes
    # How to call /reload: with the token, read from the Secret the pod reads it from.
    ref = rendered.env["MLFLOW_BLUEGREEN_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert f"get secret {ref['name']}" in notes
    assert f"{{.data.{ref['key']}}}" in notes
    assert 'curl -s -X POST -H "Authorization: Bearer $ADMIN_TOKEN"' in notes


def test_no_deploy_file_says_the_sidecar_lacks_a_feature() -> None:
    # The admin token, the webhook secret and the shutdown delay are all in the sidecar: a note
    # that they come "later" or are "not checked yet" would tell operators to work around them.
    stale = (
        "later release",
        "not check",
        "no authentication",
        "ignored for now",
        "ignores for now",
    )
    for path in DEPLOY.rglob("*"):
        if path.is_file() and path.suffix in {"", ".md", ".yaml", ".yml", ".txt", ".tpl", ".json"}:
            text = " ".join(path.read_text().lower().split())
            assert [phrase for phrase in stale if phrase in text] == [], path


@pytest.mark.parametrize(
    "values",
    [
        {"modle": {"uri": "models:/x@y"}},
        {"model": {"envManager": "pip"}},
        {"model": {"uri": ""}},
        {"drainTimeout": -1},
        {"ports": {"http": 0, "admin": 8081}},
        {"logging": {"format": "xml"}},
        {"webhook": {"secret": {"valu": "typo"}}},
        {"webhook": {"secret": {"existingSecret": "s", "existingSecretKey": ""}}},
        {"admin": {"token": {"existingSecretKey": ""}}},
        {"rollout": {"canary": {"percent": 100}}},
        {"rollout": {"linger": -5}},
        {"rollout": {"swapPolicy": "fastest"}},
        {"rollout": {"canary": {"maxLatencyRatio": 1}}},
        {"rollout": {"canary": {"minRequests": 0}}},
        {"rollout": {"canary": {"minRequests": 2.5}}},
        {"rollout": {"shadow": {"percent": 101}}},
        {"rollout": {"shadow": {"seconds": 0}}},
        {"rollout": {"shadow": {"tolerance": -0.1}}},
        {"rollout": {"shadow": {"minAgreement": 99}}},
        {"rollout": {"shadow": {"precent": 10}}},
        {"rollout": {"autoRollback": "yes", "linger": 60}},
    ],
    ids=json.dumps,
)
def test_schema_rejects_bad_values(chart: Chart, values: dict[str, Any]) -> None:
    with pytest.raises(HelmValuesError):
        chart.render(values, name=RELEASE)


def test_chart_files_are_yaml_and_json() -> None:
    for path in [CHART / "Chart.yaml", CHART / "values.yaml", *CI_VALUES]:
        assert isinstance(yaml.safe_load(Path(path).read_text()), dict), path
    json.loads((CHART / "values.schema.json").read_text())
