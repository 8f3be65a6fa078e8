"""The ConfigMap's vidgate.toml: the shape of config/vidgate.toml, integers as integers, and
accepted by the gateway's own `check-config` with the environment the Deployment sets."""

from __future__ import annotations

import os
import subprocess
import tomllib

import pytest

from vidgate_chart import REPO, deep_merge, production_values, render, vidgate_binary

TRIAL_REDIS = {"store": {"backend": "redis"}, "redis": {"enabled": True}}


def test_default_config_mirrors_the_repository_defaults():
    """Every key of config/vidgate.toml that the chart does not manage has the same default."""
    repo = tomllib.loads((REPO / "config" / "vidgate.toml").read_text())
    chart = tomllib.loads(render().toml)
    managed = {("server", "listen"), ("store", "path"), ("store", "backend"), ("store", "redis_url"), ("metrics", "listen"),
               ("archive", "url"), ("archive", "s3_endpoint"), ("archive", "s3_region")}
    secrets = {("upstream", "api_key"), ("auth", "hs256_secret"), ("callbacks", "signing_secret"), ("metrics", "bearer_token"),
               ("console", "session_secret"), ("console", "oidc_client_secret")}
    for section, keys in repo.items():
        if section == "tenants":
            continue
        for key, value in keys.items():
            if (section, key) in managed | secrets or (section, key) == ("auth", "public_key_pem_files"):
                continue
            assert chart[section][key] == value, f"{section}.{key}"
    assert chart["server"]["listen"] == "0.0.0.0:8080"
    assert chart["metrics"]["listen"] == "0.0.0.0:9090"
    assert chart["store"] == {"backend": "embedded", "path": "/var/lib/vidgate/vidgate.redb", "key_prefix": "vidgate:",
                              "retention_secs": 3024000, "min_replicas_acked": 0, "replica_ack_timeout_ms": 500,
                              "redis_ca_file": ""}
    assert chart["tenants"] == []
    for section, key in secrets:
        assert key not in chart.get(section, {}), "a secret in the ConfigMap"


def test_integers_stay_integers_and_tenants_are_an_array_of_tables():
    toml = render(production_values()).toml
    assert "max_body_bytes = 65536\n" in toml and "65536.0" not in toml
    assert "retry_delays_ms = [1000, 2000, 4000]" in toml
    cfg = tomllib.loads(toml)
    assert [t["id"] for t in cfg["tenants"]] == ["marketing", "product-design", "research"]
    marketing = cfg["tenants"][0]
    assert marketing["budget"] == "500.00" and marketing["creates_per_minute"] == 60
    assert isinstance(marketing["max_concurrent_tasks"], int)
    assert cfg["pricing"]["models"]["wan2.6-reference-video-flash"]["1080p"] == {"audio": "0.075", "silent": "0.0375"}
    assert cfg["alerts"]["thresholds"] == [0.8, 0.95, 1]
    assert cfg["store"]["backend"] == "redis" and "redis_url" not in cfg["store"]  # from the Secret


def test_strings_are_escaped():
    odd = 'quote " backslash \\ newline \n tab \t <html> é'
    cfg = tomllib.loads(render({"config": {"auth": {"issuer": odd}}}).toml)
    assert cfg["auth"]["issuer"] == odd


def deployment_env(rendered) -> dict[str, str]:
    """The environment the gateway container gets, with stand-in secret values."""
    stand_ins = {
        "VIDGATE_UPSTREAM__API_KEY": "sk-test-upstream",
        "VIDGATE_AUTH__HS256_SECRET": "x" * 40,
        "VIDGATE_CALLBACKS__SIGNING_SECRET": "whsec_c2VjcmV0LXNpZ25pbmcta2V5LWZvci10ZXN0cw==",
        "VIDGATE_METRICS__BEARER_TOKEN": "metrics-token",
        "VIDGATE_CONSOLE__SESSION_SECRET": "s" * 40,
        "VIDGATE_CONSOLE__OIDC_CLIENT_SECRET": "oidc-client-secret",
        "VIDGATE_STORE__REDIS_URL": "rediss://:pw@redis.internal:6380/0",
        "REDIS_PRIMARY_PASSWORD": "primary-pw",
        "REDIS_SENTINEL_PASSWORD": "sentinel-pw",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "secret-example",
    }
    env = {}
    for item in rendered.deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
        value = item.get("value", stand_ins[item["name"]])
        # As Kubernetes does: $(NAME) of a variable defined before is substituted.
        for name, known in env.items():
            value = value.replace(f"$({name})", known)
        env[item["name"]] = value
    return env


@pytest.mark.parametrize(
    "values",
    ["default", "trial-redis", "production", "pem-keys", "sentinel"],
)
def test_gateway_accepts_the_rendered_configuration(values, tmp_path):
    scenario = values
    if values == "default":
        values = {"config": {"tenants": [{"id": "marketing", "budget": "500.00"}]}}
    elif values == "trial-redis":
        values = TRIAL_REDIS
    elif values == "production":
        values = production_values()
    elif values == "sentinel":
        values = production_values()
        values["redis"] = {"sentinel": {
            "addresses": ["s0.redis:26379", "s1.redis:26379", "s2.redis:26379"],
            "passwordFromSecret": {"name": "redis-auth", "key": "password"},
            "sentinelPasswordFromSecret": {"name": "redis-auth", "key": "sentinel-password"},
        }}
        values["config"] = deep_merge(values.get("config", {}), {"store": {"min_replicas_acked": 1}})
    else:
        values = deep_merge(production_values(), {"jwtPublicKeys": {"keys": {"a.pem": "-----BEGIN PUBLIC KEY-----\nx\n-----END PUBLIC KEY-----"}}})
    rendered = render(values)
    config = tmp_path / "vidgate.toml"
    config.write_text(rendered.toml)
    # Only the container's environment: a stray VIDGATE_* variable of this machine must not count.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **deployment_env(rendered)}
    result = subprocess.run(
        [str(vidgate_binary()), "check-config", "--config", str(config)],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    effective = tomllib.loads(result.stdout)
    assert effective["server"]["listen"] == "0.0.0.0:8080"
    assert effective["upstream"]["api_key"] == "********"
    if scenario == "sentinel":
        # The Sentinel URL with both passwords substituted, and neither shown.
        assert effective["store"]["redis_url"] == (
            "redis+sentinel://:********@s0.redis:26379,s1.redis:26379,s2.redis:26379/mymaster/0"
            "?sentinel_password=********"
        )
        assert "primary-pw" not in result.stdout and "sentinel-pw" not in result.stdout
        assert effective["store"]["min_replicas_acked"] == 1


def test_the_archive_lives_on_the_store_volume_or_in_the_named_bucket():
    """Embedded: the PVC; a bucket: s3:// with its endpoint and region; Redis without a bucket: off."""
    default = tomllib.loads(render().toml)["archive"]
    assert default == {"url": "file:/var/lib/vidgate/results", "retention_days": 90, "max_bytes": 209715200}
    assert tomllib.loads(render(TRIAL_REDIS).toml)["archive"]["url"] == ""
    assert "no archive" in render(TRIAL_REDIS).notes
    production = tomllib.loads(render(production_values()).toml)["archive"]
    assert production["url"] == "s3://vidgate-videos/prod"
    assert production["s3_endpoint"] == "https://s3.storage.internal.example.com"
    assert production["s3_region"] == "eu-central-1"
    off = tomllib.loads(render({"archive": {"enabled": False}}).toml)["archive"]
    assert off["url"] == ""
