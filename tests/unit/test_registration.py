"""Registrator's variables and [services.NAME] keys -> the registration sent to the agent, and one
line naming the variable (or file:line and key) for every bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from basenode import config, register
from basenode.registration import from_environment

NO_COMPONENTS = config.Flags(no_consul=True, no_haproxy=True)


def load(tmp_path: Path, text: str = "", **env: str) -> config.Settings:
    path = tmp_path / "basenode.toml"
    path.write_text(text)
    flags = config.Flags(**{**NO_COMPONENTS.__dict__, "config": str(path)})
    return config.load(flags, {"PATH": "/usr/bin:/bin", **env})


def error(tmp_path: Path, text: str = "", **env: str) -> str:
    with pytest.raises(config.ConfigError) as e:
        load(tmp_path, text, **env)
    return str(e.value).replace(str(tmp_path) + "/", "")


def test_the_plain_variables_become_one_full_registration(tmp_path):
    env = {
        "SERVICE_NAME": "api",
        "SERVICE_PORT": "8080",
        "SERVICE_TAGS": "v1, blue",
        "SERVICE_META": "version=1.2,team=core",
        "SERVICE_ADDRESS": "10.0.0.5",
        "SERVICE_WEIGHT": "10",
        "SERVICE_CHECK_HTTP": "/health",
        "SERVICE_CHECK_TIMEOUT": "3s",
        "SERVICE_CHECK_DEREGISTER_AFTER": "10m",
    }
    [service] = load(tmp_path, **env).services
    assert register.definition(service) == {
        "ID": "api",
        "Name": "api",
        "Port": 8080,
        "Tags": ["v1", "blue"],
        "Address": "10.0.0.5",
        "Meta": {"team": "core", "version": "1.2"},
        "Weights": {"Passing": 10, "Warning": 1},
        "Check": {
            "CheckID": "service:api",
            "Name": "Service 'api' check",
            "HTTP": "http://127.0.0.1:8080/health",
            "Interval": "10s",
            "Timeout": "3s",
            "DeregisterCriticalServiceAfter": "10m",
        },
    }


def test_per_port_variables_make_one_service_per_port_inheriting_the_plain_values():
    env = {
        "SERVICE_NAME": "shop",
        "SERVICE_PORT": "8080",
        "SERVICE_CHECK_HTTP": "/health",
        "SERVICE_META": "team=core",
        "SERVICE_8081_TAGS": "admin",
        "SERVICE_8081_CHECK_TCP": "1",
        "SERVICE_9000_NAME": "metrics",
        "SERVICE_9000_ID": "metrics-1",
    }
    shop, admin, metrics = from_environment(env)
    assert (shop.name, shop.port) == ("shop", 8080)
    assert (admin.name, admin.port, admin.tags) == ("shop-8081", 8081, ("admin",))  # registrator's name
    assert (admin.check_tcp, admin.check_http, admin.meta) == (True, None, (("team", "core"),))
    assert (metrics.name, metrics.service_id, metrics.check_http) == ("metrics", "metrics-1", "/health")
    assert admin.source == "SERVICE_NAME" and metrics.source == "SERVICE_9000_NAME"


def test_per_port_services_alone_need_no_service_port():
    [only] = from_environment({"SERVICE_8081_NAME": "admin", "SERVICE_8081_CHECK_TTL": "30s"})
    assert (only.name, only.port, only.check_ttl) == ("admin", 8081, "30s")
    assert register.check_definition(only) == {
        "CheckID": "service:admin",
        "Name": "Service 'admin' check",
        "TTL": "30s",
    }


def test_grpc_checks_take_1_a_service_name_or_an_address():
    def target(value: str) -> str:
        [service] = from_environment(
            {"SERVICE_NAME": "rpc", "SERVICE_PORT": "50051", "SERVICE_CHECK_GRPC": value}
        )
        return register.check_definition(service)["GRPC"]

    assert target("1") == "127.0.0.1:50051"
    assert target("health.v1") == "127.0.0.1:50051/health.v1"
    assert target("10.0.0.9:50052/health.v1") == "10.0.0.9:50052/health.v1"


def test_the_config_file_takes_the_same_keys_with_tables_for_meta_and_weight(tmp_path):
    text = (
        "[services.rpc]\n"
        "port = 50051\n"
        'id = "rpc-1"\n'
        'tags = ["v2"]\n'
        'meta = { proto = "grpc", zone = "a" }\n'
        "weight = { passing = 5, warning = 0 }\n"
        'address = "rpc.internal"\n'
        "check_grpc = true\n"
        'check_interval = "5s"\n'
        'check_timeout = "1s"\n'
        'check_deregister_after = "1h"\n'
    )
    [service] = load(tmp_path, text).services
    body = register.definition(service)
    assert body["Meta"] == {"proto": "grpc", "zone": "a"} and body["Weights"] == {"Passing": 5, "Warning": 0}
    assert body["Address"] == "rpc.internal" and body["ID"] == "rpc-1"
    assert body["Check"]["GRPC"] == "127.0.0.1:50051"
    assert body["Check"]["DeregisterCriticalServiceAfter"] == "1h"
    assert load(tmp_path, '[services.a]\nport = 1\nweight = "4/2"\n').services[0].weight == (4, 2)
    assert load(tmp_path, "[services.a]\nport = 1\nweight = 7\n").services[0].weight == (7, 1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[services.a]\nport = 1\nmeta = { "bad key" = "x" }\n',
            'basenode.toml:3: services.a.meta: meta key "bad key" must match',
        ),
        (
            '[services.a]\nport = 1\nmeta = "k=v w"\n',
            "basenode.toml:3: services.a.meta: meta key k: the value must be",
        ),
        (
            "[services.a]\nport = 1\nweight = { passing = 0 }\n",
            "basenode.toml:3: services.a.weight: expected passing 1-256",
        ),
        (
            '[services.a]\nport = 1\ncheck_ttl = "forever"\n',
            'basenode.toml:3: services.a.check_ttl: expected a duration like 10s, 500ms or 5m, got "forever"',
        ),
        (
            '[services.a]\nport = 1\ncheck_tcp = true\ncheck_grpc = "1"\n',
            "basenode.toml:4: services.a.check_grpc: one check per service, and services.a.check_tcp is set",
        ),
        (
            '[services.a]\nport = 1\naddress = "a b"\n',
            'basenode.toml:3: services.a.address: expected an IP address or a host name, got "a b"',
        ),
        (
            '[services.a]\nport = 1\ncheck_timout = "1s"\n',
            "basenode.toml:3: services.a.check_timout: unknown key",
        ),
    ],
)
def test_a_bad_key_in_the_file_is_named_with_its_line(tmp_path, text, message):
    assert error(tmp_path, text).startswith(message)


def test_a_meta_value_is_never_echoed_in_an_error(tmp_path):
    for meta in ("token=s3cr3t value", "s3cr3t", "k=" + "s3cr3t" * 60):
        text = error(tmp_path, SERVICE_NAME="a", SERVICE_PORT="1", SERVICE_META=meta)
        assert text.startswith("SERVICE_META: ") and "s3cr3t" not in text


def test_two_services_with_one_id_are_refused(tmp_path):
    assert "registered twice" in error(
        tmp_path, "[services.api]\nport = 2\n", SERVICE_NAME="api", SERVICE_PORT="1"
    )


def test_the_register_loop_passes_ttl_checks_three_times_per_ttl(tmp_path):
    settings = load(tmp_path, '[services.a]\nport = 1\ncheck_ttl = "6s"\n')
    assert register.refresh_seconds(settings) == 2.0
    assert register.refresh_seconds(load(tmp_path, "[services.a]\nport = 1\n")) == register.REFRESH_SECONDS
