"""The shape of deploy/ (Docker cannot run where the suite runs, so the files are read, not run):
walletd's containers reach PostgreSQL only through HAProxy and nothing of the control plane
(PostgreSQL nodes, Patroni's REST API, etcd); Patroni's unsafe endpoints need a password kept out
of the files; walletd believes X-Forwarded-For from its balancer only."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
WALLETD = ["walletd1", "walletd2"]
CONTROL_PLANE = ["pg1", "pg2", "pg3", "etcd1", "etcd2", "etcd3"]


def networks(service: str) -> set[str]:
    found = SERVICES[service].get("networks", ["default"])
    return set(found if isinstance(found, list) else found.keys())


def test_walletd_shares_no_network_with_the_control_plane():
    for walletd in WALLETD:
        for other in CONTROL_PLANE:
            assert not networks(walletd) & networks(other), (walletd, other)
    assert all(networks(etcd) == {"control"} for etcd in ("etcd1", "etcd2", "etcd3"))
    assert all(COMPOSE["networks"][name].get("internal") for name in ("data", "database", "control"))


def test_walletd_reaches_postgresql_through_haproxy_only():
    for walletd in WALLETD:
        url = urlsplit(SERVICES[walletd]["environment"]["DATABASE_URL"].replace("${WALLETD_DB_PASSWORD}", "pw"))
        assert url.hostname == "postgres" and url.port == 5432, url
        assert networks(walletd) & networks("postgres") == {"data"}
    assert SERVICES["postgres"]["image"].startswith("haproxy")
    config = (DEPLOY / "haproxy" / "postgres.cfg").read_text()
    leader = config[config.index("listen leader"):config.index("listen standbys")]
    assert "option httpchk GET /primary" in leader
    assert re.findall(r"server (pg\d) \1:5432 check port 8008", leader) == ["pg1", "pg2", "pg3"]
    assert "on-marked-down shutdown-sessions" in config  # a demoted leader's connections are cut
    assert ":8008" not in re.sub(r"check port 8008", "", config)  # the REST API itself is never forwarded


def test_patronis_unsafe_endpoints_need_a_password_kept_out_of_the_files():
    for n in (1, 2, 3):
        node = yaml.safe_load((DEPLOY / "patroni" / f"pg{n}.yml").read_text())
        assert node["restapi"]["authentication"] == {"username": "patroni"}  # the password is not in the file
    for node in ("pg1", "pg2", "pg3"):
        env = SERVICES[node]["environment"]
        assert env["PATRONI_RESTAPI_USERNAME"] == "patroni"
        assert env["PATRONI_RESTAPI_PASSWORD"].startswith("${PATRONI_RESTAPI_PASSWORD:?")  # required


def test_only_the_balancer_is_published_and_only_it_is_trusted_for_x_forwarded_for():
    published = [name for name, service in SERVICES.items() if service.get("ports")]
    assert published == ["balancer"]
    address = SERVICES["balancer"]["networks"]["edge"]["ipv4_address"]
    for walletd in WALLETD:
        env = SERVICES[walletd]["environment"]
        assert env["WALLETD_TRUSTED_PROXIES"] == f"{address}/32"
        assert env["WALLETD_SECRETS_KEY"].startswith("${WALLETD_SECRETS_KEY:?")  # required, never a default
        assert env["WALLETD_JWT_SECRET"].startswith("${WALLETD_JWT_SECRET:?")
    balancer = (DEPLOY / "haproxy" / "walletd.cfg").read_text()
    assert "option forwardfor" in balancer
    assert re.findall(r"server (walletd\d) \1:8010 check", balancer) == WALLETD
