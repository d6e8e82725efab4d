"""docker-compose.yml, read by a real Compose implementation (Debian's docker-compose 1.29, no engine needed).

`make install-dev` installs it (as root, with apt); on a laptop without it the
tests skip, under CI they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from tests.helpers import ROOT

COMPOSE = shutil.which("docker-compose")


@pytest.fixture(scope="module")
def compose():
    if COMPOSE is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is not installed (make install-dev installs it as root)")
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")

    def run(*args, **env):
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_"))}
        full_env.pop("GRAFANA_ADMIN_PASSWORD", None)
        full_env.update(env)
        return subprocess.run([COMPOSE, "-f", str(ROOT / "docker-compose.yml"), *args], cwd=ROOT, env=full_env,
                              capture_output=True, text=True, timeout=120)

    return run


@pytest.mark.parametrize("profiles", [[], ["gpu"], ["monitoring"], ["gpu", "monitoring"]])
def test_compose_file_is_valid_with_each_profile(compose, profiles):
    """`docker-compose config -q` accepts the file, whichever profiles are on, with no password set."""
    args = [arg for profile in profiles for arg in ("--profile", profile)]
    out = compose(*args, "config", "-q")
    assert out.returncode == 0, out.stderr


def test_monitoring_profile_runs_prometheus_and_grafana_pinned_on_host(compose):
    """Prometheus and Grafana: in `monitoring` only, pinned, published on HOST, Grafana's password from the env."""
    out = compose("--profile", "monitoring", "config", GRAFANA_ADMIN_PASSWORD="s3cret", HOST="10.1.2.3")
    assert out.returncode == 0, out.stderr
    services = yaml.safe_load(out.stdout)["services"]
    for name in ("prometheus", "grafana"):
        service = services[name]
        assert service["profiles"] == ["monitoring"]
        image, _, tag = service["image"].rpartition(":")
        assert image and tag[:1].isdigit() or tag[:2] in ("v1", "v2", "v3"), service["image"]  # a version, not latest
        assert all(port["host_ip"] == "10.1.2.3" if isinstance(port, dict) else port.startswith("10.1.2.3:")
                   for port in service["ports"])
        for volume in service["volumes"]:  # "source:target:mode"; a host path for the files it reads
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            if source.startswith("/"):
                assert os.path.exists(source), source
    grafana = services["grafana"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "s3cret"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "GF_SECURITY_ADMIN_PASSWORD" in " ".join(grafana["entrypoint"])  # refuses to start without one
    assert "profiles" not in services["webapp"]


def test_grafana_without_a_password_refuses_to_start():
    """Grafana's entrypoint, run by a real shell: no password, exit 1 and the reason; a password, Grafana runs."""
    compose_file = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    script = compose_file["services"]["grafana"]["entrypoint"][2].replace("$$", "$").replace("/run.sh", "true")
    refused = subprocess.run(["sh", "-c", script], env={"PATH": os.environ["PATH"], "GF_SECURITY_ADMIN_PASSWORD": ""},
                             capture_output=True, text=True)
    assert refused.returncode == 1 and "GRAFANA_ADMIN_PASSWORD" in refused.stderr
    started = subprocess.run(["sh", "-c", script], env={"PATH": os.environ["PATH"], "GF_SECURITY_ADMIN_PASSWORD": "x"})
    assert started.returncode == 0
