"""The chart renders with Helm's engine and every manifest validates against the Kubernetes
schemas, for the default values, a trial with the in-chart Redis and a production-like
values file, at 1, 3 and 20 replicas; plus the properties a safe rollout depends on."""

from __future__ import annotations

import functools

import helm_python as helm
import kubernetes_validate
import pytest

from vidgate_chart import (
    CHART_DIR,
    KUBE_VERSIONS,
    NOT_SCHEMA_CHECKED,
    RELEASE,
    deep_merge,
    production_values,
    render,
    render_error,
)

TRIAL_REDIS = {"store": {"backend": "redis"}, "redis": {"enabled": True}}


def scenario(name: str, replicas: int):
    if name == "default":
        assert replicas == 1  # the embedded store refuses more (test_embedded_store_refuses_*)
        return {}
    if name == "trial-redis":
        return deep_merge(TRIAL_REDIS, {"replicaCount": replicas})
    return deep_merge(production_values(), {"replicaCount": replicas})


SCENARIOS = [
    ("default", 1),
    ("trial-redis", 1),
    ("trial-redis", 3),
    ("trial-redis", 20),
    ("production", 1),
    ("production", 3),
    ("production", 20),
]


@functools.lru_cache(maxsize=None)
def rendered(name: str, replicas: int):
    return render(scenario(name, replicas))


def pod_specs(r):
    for kind in ("Deployment", "StatefulSet"):
        for obj in r.of_kind(kind):
            yield obj, obj["spec"]["template"]["spec"]


# --- lint and schema validation ---------------------------------------------------------------


@pytest.mark.parametrize("values", [{}, "production"], ids=["default", "production"])
def test_helm_lint_strict_passes(values):
    values = production_values() if values == "production" else values
    report = helm.lint(str(CHART_DIR), values, strict=True, namespace="vidgate", kube_version="v1.30.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], problems


@pytest.mark.parametrize("name,replicas", SCENARIOS, ids=[f"{n}-{r}" for n, r in SCENARIOS])
def test_every_manifest_validates_against_kubernetes_schemas(name, replicas):
    r = rendered(name, replicas)
    assert r.objects, "nothing rendered"
    checked = 0
    for obj in r.objects:
        key = (obj["apiVersion"], obj["kind"])
        if key in NOT_SCHEMA_CHECKED:
            continue
        for version in KUBE_VERSIONS:
            # strict: unknown fields are errors too (a misplaced key would be dropped silently).
            kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    assert checked >= 6


@pytest.mark.parametrize("name,replicas", SCENARIOS, ids=[f"{n}-{r}" for n, r in SCENARIOS])
def test_replicas_and_rollout_strategy(name, replicas):
    d = rendered(name, replicas).deployment
    assert d["spec"]["replicas"] == replicas
    strategy = d["spec"]["strategy"]
    if name == "default":
        assert strategy["type"] == "Recreate"  # one redb writer
    else:
        assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}}


def test_kinds_rendered_by_the_production_values():
    r = rendered("production", 3)
    kinds = sorted({o["kind"] for o in r.objects})
    assert kinds == [
        "ConfigMap", "Deployment", "Ingress", "NetworkPolicy", "PodDisruptionBudget",
        "PrometheusRule", "Service", "ServiceAccount", "ServiceMonitor",
    ]
    assert r.maybe("Secret") is None  # existingSecret: the chart makes none
    assert r.maybe("PersistentVolumeClaim") is None  # Redis store: no volume for redb


# --- pods: security context, probes, termination ----------------------------------------------


@pytest.mark.parametrize("name,replicas", [("default", 1), ("trial-redis", 3), ("production", 20)])
def test_security_context_everywhere(name, replicas):
    r = rendered(name, replicas)
    specs = list(pod_specs(r))
    assert len(specs) == (2 if name == "trial-redis" else 1)
    for obj, spec in specs:
        where = obj["metadata"]["name"]
        assert spec["automountServiceAccountToken"] is False, where
        assert spec["enableServiceLinks"] is False, where
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, where
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", where
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in sc["capabilities"], where
            assert sc.get("privileged", False) is False, where
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], where
            assert c.get("readinessProbe") and c.get("livenessProbe"), where


@pytest.mark.parametrize("name,replicas", [("default", 1), ("production", 3)])
def test_gateway_probes_and_graceful_termination(name, replicas):
    spec = rendered(name, replicas).deployment["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["args"] == ["serve", "--config", "/etc/vidgate/vidgate.toml"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    # SIGTERM drains in-flight requests for up to 30 s (server shutdown timeout).
    assert spec["terminationGracePeriodSeconds"] > pre_stop + 30
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/etc/vidgate/vidgate.toml"]["readOnly"] is True
    assert "/var/lib/vidgate" in mounts and "/tmp" in mounts  # writable despite the read-only root


def test_gateway_secrets_come_from_the_secret_as_environment():
    prod = rendered("production", 3).deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in prod["env"]}
    refs = {name: e["valueFrom"]["secretKeyRef"] for name, e in env.items()}
    assert refs["VIDGATE_UPSTREAM__API_KEY"] == {"name": "vidgate-secrets", "key": "upstream-api-key"}
    assert refs["VIDGATE_AUTH__HS256_SECRET"]["optional"] is True  # RS256 only
    assert refs["VIDGATE_CALLBACKS__SIGNING_SECRET"]["optional"] is True
    assert refs["VIDGATE_CONSOLE__OIDC_CLIENT_SECRET"] == {"name": "vidgate-secrets", "key": "oidc-client-secret",
                                                         "optional": True}  # empty: a public client
    assert refs["VIDGATE_METRICS__BEARER_TOKEN"] == {"name": "vidgate-secrets", "key": "metrics-bearer-token"}
    assert refs["VIDGATE_STORE__REDIS_URL"] == {"name": "vidgate-redis", "key": "redis-url"}
    assert all("value" not in e for e in env.values())

    default = rendered("default", 1)
    env = {e["name"]: e for e in default.deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["VIDGATE_AUTH__HS256_SECRET"]["valueFrom"]["secretKeyRef"]["optional"] is False  # HS256 on
    assert default.one("Secret", RELEASE)["data"] == {"upstream-api-key": ""}
    assert "WARNING: no upstream API key" in default.notes


def test_anti_affinity_spreads_pods_without_blocking_scheduling():
    spec = rendered("production", 20).deployment["spec"]["template"]["spec"]
    (term,) = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    hard = render(deep_merge(production_values(), {"podAntiAffinity": "hard"})).deployment
    assert hard["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]


# --- wiring between objects -------------------------------------------------------------------


@pytest.mark.parametrize("name,replicas", [("default", 1), ("trial-redis", 3), ("production", 3)])
def test_services_select_their_pods_and_name_existing_ports(name, replicas):
    r = rendered(name, replicas)
    pods = {}
    for obj, spec in pod_specs(r):
        labels = obj["spec"]["template"]["metadata"]["labels"]
        assert obj["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ports = {p["name"] for c in spec["containers"] for p in c.get("ports", [])}
        pods[obj["metadata"]["name"]] = (labels, ports)
    for svc in r.of_kind("Service"):
        selected = [n for n, (labels, _) in pods.items() if svc["spec"]["selector"].items() <= labels.items()]
        assert len(selected) == 1, (svc["metadata"]["name"], selected)  # never both gateway and Redis
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in pods[selected[0]][1]
    gateway = r.one("Service", RELEASE)
    service_ports = {p["name"] for p in gateway["spec"]["ports"]}
    for ing in r.of_kind("Ingress"):
        for rule in ing["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"]["name"] == RELEASE
                assert path["backend"]["service"]["port"]["name"] in service_ports
    pdb = r.one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == r.deployment["spec"]["selector"]["matchLabels"]


def test_callback_ingress_publishes_only_the_callback_route():
    r = rendered("production", 3)
    cb = r.one("Ingress", f"{RELEASE}-callbacks")
    ((path,),) = [rule["http"]["paths"] for rule in cb["spec"]["rules"]]
    assert path["path"] == "/v1/upstream/callbacks/" and path["pathType"] == "Prefix"
    assert cb["spec"]["tls"]
    # /metrics has its own port: no Ingress can reach it.
    assert all(
        p["backend"]["service"]["port"]["name"] == "http"
        for ing in r.of_kind("Ingress") for rule in ing["spec"]["rules"] for p in rule["http"]["paths"]
    )


def test_service_monitor_scrapes_the_metrics_port_with_the_token():
    # Not schema-checked (a CRD): its structure is checked here.
    r = rendered("production", 3)
    sm = r.one("ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    svc = r.one("Service", RELEASE)
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["vidgate"]}
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] == "metrics" and ep["path"] == "/metrics"
    assert ep["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert ep["authorization"] == {
        "type": "Bearer", "credentials": {"name": "vidgate-secrets", "key": "metrics-bearer-token"},
    }
    assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "authorization", "relabelings", "metricRelabelings"}
    # With /metrics on the API port the ServiceMonitor follows it.
    on_api = render(deep_merge(production_values(), {"metrics": {"port": 0, "requireToken": False}}))
    (ep,) = on_api.one("ServiceMonitor")["spec"]["endpoints"]
    assert ep["port"] == "http" and "authorization" not in ep


def test_network_policies_let_the_gateway_reach_redis_and_nothing_else_reach_redis():
    r = render(deep_merge(TRIAL_REDIS, {"networkPolicy": {"enabled": True, "egress": {"enabled": True}}}))
    gw = r.one("NetworkPolicy", RELEASE)
    redis = r.one("NetworkPolicy", f"{RELEASE}-redis")
    redis_pod_labels = r.one("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    gateway_pod_labels = r.deployment["spec"]["template"]["metadata"]["labels"]
    assert gw["spec"]["policyTypes"] == ["Ingress", "Egress"]
    to_redis = [e for e in gw["spec"]["egress"] if any(p["port"] == 6379 for p in e["ports"])]
    assert to_redis and to_redis[0]["to"][0]["podSelector"]["matchLabels"].items() <= redis_pod_labels.items()
    (allowed,) = redis["spec"]["ingress"]
    assert allowed["from"][0]["podSelector"]["matchLabels"].items() <= gateway_pod_labels.items()
    dns = [e for e in gw["spec"]["egress"] if any(p["port"] == 53 for p in e["ports"])]
    assert dns


def test_trial_redis_keeps_money_safe_settings():
    r = rendered("trial-redis", 3)
    sts = r.one("StatefulSet")
    assert sts["spec"]["replicas"] == 1
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    pairs = dict(zip(args[::2], args[1::2]))
    assert pairs["--appendonly"] == "yes"
    assert pairs["--appendfsync"] in {"everysec", "always"}
    assert pairs["--maxmemory-policy"] == "noeviction"
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert 'redis_url = "redis://vidgate-redis:6379"' in r.toml


def test_store_volumes():
    default = rendered("default", 1)
    claim = default.one("PersistentVolumeClaim")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    volumes = {v["name"]: v for v in default.deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    existing = render({"store": {"persistence": {"existingClaim": "ledger-disk"}}})
    assert existing.maybe("PersistentVolumeClaim") is None
    volumes = {v["name"]: v for v in existing.deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "ledger-disk"
    scratch = render({"store": {"persistence": {"enabled": False}}})
    volumes = {v["name"]: v for v in scratch.deployment["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes["data"] and scratch.maybe("PersistentVolumeClaim") is None
    assert "LOST" in scratch.notes


def test_external_redis_url_lands_in_the_configuration():
    r = render({"store": {"backend": "redis"}, "redis": {"url": "rediss://redis.internal:6380/0"}, "replicaCount": 3})
    assert 'redis_url = "rediss://redis.internal:6380/0"' in r.toml
    assert r.maybe("StatefulSet") is None and r.maybe("PersistentVolumeClaim") is None
    env = [e["name"] for e in r.deployment["spec"]["template"]["spec"]["containers"][0]["env"]]
    assert "VIDGATE_STORE__REDIS_URL" not in env


SENTINELS = ["redis-node-0.redis-headless:26379", "redis-node-1.redis-headless:26379", "redis-node-2.redis-headless:26379"]


def test_an_external_redis_with_sentinel_without_passwords_lands_in_the_configuration():
    r = render({"store": {"backend": "redis"}, "redis": {"sentinel": {"addresses": SENTINELS}}, "replicaCount": 3})
    assert f'redis_url = "redis+sentinel://{",".join(SENTINELS)}/mymaster/0"' in r.toml
    assert r.maybe("StatefulSet") is None
    env = [e["name"] for e in r.deployment["spec"]["template"]["spec"]["containers"][0]["env"]]
    assert "VIDGATE_STORE__REDIS_URL" not in env


def test_sentinel_passwords_come_from_secrets_and_never_reach_the_config_map():
    r = render({
        "store": {"backend": "redis"},
        "replicaCount": 3,
        "config": {"store": {"min_replicas_acked": 1}},
        "redis": {"sentinel": {
            "addresses": SENTINELS, "masterName": "money", "db": 2, "username": "vidgate",
            "passwordFromSecret": {"name": "redis-auth", "key": "password"},
            "sentinelPasswordFromSecret": {"name": "redis-auth", "key": "sentinel-password"},
        }},
    })
    assert "redis_url" not in r.toml and "min_replicas_acked = 1" in r.toml
    env = {e["name"]: e for e in r.deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["REDIS_PRIMARY_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "redis-auth", "key": "password"}
    assert env["REDIS_SENTINEL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "redis-auth", "key": "sentinel-password"}
    names = list(env)
    # Kubernetes substitutes $(NAME) only from variables defined before.
    assert names.index("REDIS_PRIMARY_PASSWORD") < names.index("VIDGATE_STORE__REDIS_URL")
    assert names.index("REDIS_SENTINEL_PASSWORD") < names.index("VIDGATE_STORE__REDIS_URL")
    assert env["VIDGATE_STORE__REDIS_URL"]["value"] == (
        f"redis+sentinel://vidgate:$(REDIS_PRIMARY_PASSWORD)@{','.join(SENTINELS)}/money/2"
        "?sentinel_password=$(REDIS_SENTINEL_PASSWORD)"
    )


def test_sentinel_is_one_more_redis_source_and_its_port_is_let_through():
    error = render_error({"store": {"backend": "redis"}, "redis": {"url": "redis://r:6379", "sentinel": {"addresses": SENTINELS}}})
    assert "needs exactly one of" in error
    r = render({
        "store": {"backend": "redis"}, "redis": {"sentinel": {"addresses": SENTINELS}},
        "networkPolicy": {"enabled": True, "egress": {"enabled": True, "redisTo": [{"ipBlock": {"cidr": "10.0.0.0/24"}}]}},
    })
    gateway = r.one("NetworkPolicy", RELEASE)
    ports = {p["port"] for rule in gateway["spec"]["egress"] for p in rule.get("ports", [])}
    assert {6379, 26379} <= ports


def test_the_chart_docs_say_its_own_redis_is_a_single_node_for_trials():
    values = (CHART_DIR / "values.yaml").read_text()
    assert "for trials only: a single node" in values
    readme = (CHART_DIR / "README.md").read_text()
    assert "Sentinel" in readme and "single node" in readme


# --- autoscaling and disruption ---------------------------------------------------------------


def test_autoscaling_replaces_the_replica_count():
    r = render(deep_merge(production_values(), {"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 20}}))
    hpa = r.one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": RELEASE}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 20)
    assert "replicas" not in r.deployment["spec"]
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(hpa, version, strict=True)


# --- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize("replicas", [2, 3, 20])
def test_embedded_store_refuses_more_than_one_replica(replicas):
    msg = render_error({"replicaCount": replicas})
    assert "store.backend=embedded needs replicaCount=1" in msg


def test_embedded_store_refuses_autoscaling():
    msg = render_error({"autoscaling": {"enabled": True}})
    assert "store.backend=embedded cannot autoscale" in msg


@pytest.mark.parametrize(
    "values,expected",
    [
        ({"store": {"backend": "redis"}}, "needs exactly one of redis.url"),
        ({"store": {"backend": "redis"}, "redis": {"enabled": True, "url": "redis://r:6379"}}, "needs exactly one of"),
        ({"redis": {"enabled": True}}, "redis.enabled=true needs store.backend=redis"),
        ({"terminationGracePeriodSeconds": 32, "lifecycle": {"preStopSleepSeconds": 5}}, "must exceed"),
        ({"config": {"alerts": {"thresholds": [0.95, 0.8]}}}, "must be ascending"),
        ({"jwtPublicKeys": {"existingConfigMap": "idp-keys"}}, "needs jwtPublicKeys.fileNames"),
    ],
    ids=["redis-without-url", "two-redis-sources", "trial-redis-unused", "short-grace", "thresholds-order", "pem-names"],
)
def test_template_refusals(values, expected):
    assert expected in render_error(values)


@pytest.mark.parametrize(
    "values,where",
    [
        ({"replicaCount": "3"}, "/replicaCount"),
        ({"replicaCount": 0}, "/replicaCount"),
        ({"store": {"backend": "postgres"}}, "/store/backend"),
        ({"image": {"tag": 1.2}}, "/image/tag"),
        ({"replicas": 3}, "replicas"),
        ({"config": {"tenants": [{"id": "ops", "budget": 500.0}]}}, "/config/tenants/0/budget"),
        ({"config": {"tenants": [{"id": "ops", "budget": "5.1234567"}]}}, "/config/tenants/0/budget"),
        ({"config": {"tenants": [{"id": "ops", "period": "year"}]}}, "/config/tenants/0/period"),
        ({"config": {"tenants": [{"id": "ops", "creates_per_minute": "60"}]}}, "/config/tenants/0/creates_per_minute"),
        ({"config": {"tenants": [{"id": "bad id"}]}}, "/config/tenants/0/id"),
        ({"config": {"tenants": [{"id": "ops", "budjet": "1"}]}}, "budjet"),
        ({"config": {"server": {"listen": "0.0.0.0:9999"}}}, "listen"),
        ({"config": {"upstream": {"api_key": "sk-in-a-configmap"}}}, "api_key"),
        ({"config": {"store": {"backend": "redis"}}}, "backend"),
        ({"config": {"auth": {"algorithms": ["none"]}}}, "/config/auth/algorithms/0"),
        ({"config": {"pricing": {"models": {"m": {"4k": {"audio": "1", "silent": "1"}}}}}}, "'4k'"),
        ({"config": {"pricing": {"models": {"m": {"720p": {"audio": 0.05, "silent": "1"}}}}}}, "audio"),
        ({"config": {"alerts": {"thresholds": [0.8, 1.5]}}}, "/config/alerts/thresholds/1"),
        ({"config": {"reconciler": {"enabled": "yes"}}}, "/config/reconciler/enabled"),
        ({"redis": {"appendfsync": "no"}}, "/redis/appendfsync"),
        ({"redis": {"url": "http://redis:6379"}}, "/redis/url"),
        ({"secrets": {"hs256Secret": "too-short"}}, "/secrets/hs256Secret"),
        ({"terminationGracePeriodSeconds": 10}, "/terminationGracePeriodSeconds"),
        ({"metrics": {"port": 70000}}, "/metrics/port"),
        ({"serviceMonitor": {"interval": "often"}}, "/serviceMonitor/interval"),
        ({"podAntiAffinity": "sometimes"}, "/podAntiAffinity"),
    ],
)
def test_schema_refuses_wrong_values(values, where):
    msg = render_error(values)
    assert "values don't meet the specifications of the schema" in msg or "schema" in msg, msg
    assert where in msg, msg


# --- pods roll when the configuration changes ---------------------------------------------------


def annotations(values):
    return render(values).deployment["spec"]["template"]["metadata"]["annotations"]


def test_config_change_rolls_the_pods():
    base = production_values()
    before = annotations(base)["checksum/config"]
    budget = deep_merge(base, {})
    budget["config"]["tenants"][0]["budget"] = "750.00"
    assert annotations(budget)["checksum/config"] != before
    price = deep_merge(base, {"config": {"pricing": {"models": {"wan2.6-reference-video-flash": {"720p": {"audio": "0.06"}}}}}})
    assert annotations(price)["checksum/config"] != before
    # Not a configuration change: the pods stay.
    assert annotations(deep_merge(base, {"replicaCount": 20}))["checksum/config"] == before
    assert annotations(deep_merge(base, {"resources": {"limits": {"memory": "2Gi"}}}))["checksum/config"] == before


def test_chart_made_secret_change_rolls_the_pods():
    one = annotations({"secrets": {"upstreamApiKey": "sk-one"}})
    two = annotations({"secrets": {"upstreamApiKey": "sk-two"}})
    assert one["checksum/secret"] != two["checksum/secret"]
    assert one["checksum/config"] == two["checksum/config"]
    assert "checksum/secret" not in annotations(production_values())  # existing Secret: roll by hand


def test_jwt_public_keys_are_mounted_and_listed():
    pem = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n"
    values = deep_merge(production_values(), {
        "config": {"auth": {"algorithms": ["RS256", "ES256"], "jwks_url": ""}},
        "jwtPublicKeys": {"keys": {"idp-2026-05.pem": pem, "idp-2026-11.pem": pem}},
    })
    r = render(values)
    cm = r.one("ConfigMap", f"{RELEASE}-jwt-keys")
    assert sorted(cm["data"]) == ["idp-2026-05.pem", "idp-2026-11.pem"]
    assert cm["data"]["idp-2026-11.pem"].startswith("-----BEGIN PUBLIC KEY-----")
    assert ('public_key_pem_files = ["/etc/vidgate/jwt/idp-2026-05.pem", "/etc/vidgate/jwt/idp-2026-11.pem"]') in r.toml
    spec = r.deployment["spec"]["template"]["spec"]
    assert {"name": "jwt-keys", "mountPath": "/etc/vidgate/jwt", "readOnly": True} in spec["containers"][0]["volumeMounts"]
    rotated = deep_merge(values, {})
    rotated["jwtPublicKeys"]["keys"] = {"idp-2026-11.pem": pem}
    before = r.deployment["spec"]["template"]["metadata"]["annotations"]
    after = render(rotated).deployment["spec"]["template"]["metadata"]["annotations"]
    assert before["checksum/jwt-keys"] != after["checksum/jwt-keys"]


def test_notes_guide_the_operator():
    notes = rendered("production", 3).notes
    assert "kubectl -n vidgate rollout status deployment/vidgate" in notes
    assert "https://vidgate.internal.example.com/" in notes
    assert "docs/operations.md" in notes
    assert "WARNING" not in notes
    default = rendered("default", 1).notes
    assert "port-forward service/vidgate" in default and "no tenants" in default


def test_archive_credentials_come_from_their_secret_or_a_service_account_role():
    env = {e["name"]: e for e in rendered("production", 3).deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "vidgate-archive-s3", "key": "access-key-id"}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "vidgate-archive-s3", "key": "secret-access-key"}
    role = deep_merge(production_values(), {
        "archive": {"s3": {"credentialsSecret": {"name": ""}}},
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/vidgate"}},
    })
    r = render(role)
    names = [e["name"] for e in r.deployment["spec"]["template"]["spec"]["containers"][0]["env"]]
    assert "AWS_ACCESS_KEY_ID" not in names and "AWS_SECRET_ACCESS_KEY" not in names
    account = r.one("ServiceAccount")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith("role/vidgate")
    assert r.deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
