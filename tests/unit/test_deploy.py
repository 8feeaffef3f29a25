"""The deployment files stay in step with the code: every BROKER_* variable they set is a
real setting, and the YAML parses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from broker.config import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
FILES = ["compose.yaml", "kubernetes/broker.yaml", "systemd/broker.service", "Containerfile"]


def _settings_keys() -> set[str]:
    keys = set()
    for section, field in Settings.model_fields.items():
        model = field.annotation
        for key in model.model_fields:  # type: ignore[union-attr]
            keys.add(f"BROKER_{section.upper()}_{key.upper()}")
    return keys


@pytest.mark.parametrize("name", FILES)
def test_every_broker_variable_is_a_setting(name: str) -> None:
    text = (DEPLOY / name).read_text()
    used = set(re.findall(r"\bBROKER_[A-Z]+_[A-Z_]+\b", text)) - {"BROKER_CONFIG"}
    assert used <= _settings_keys(), used - _settings_keys()


@pytest.mark.parametrize("name", ["compose.yaml", "kubernetes/broker.yaml"])
def test_yaml_parses(name: str) -> None:
    docs = [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]
    assert docs


def test_load_balancers_ask_readiness_and_the_image_installs_the_lock() -> None:
    haproxy = (DEPLOY / "haproxy.cfg").read_text()
    checks = re.findall(r"option httpchk GET (\S+)", haproxy)
    assert checks and set(checks) == {"/readyz"}  # a draining or broken node gets no sessions
    kube = yaml.safe_load_all((DEPLOY / "kubernetes" / "broker.yaml").read_text())
    probes = [c["readinessProbe"]["httpGet"]["path"] for doc in kube if doc
              for c in doc.get("spec", {}).get("template", {}).get("spec", {})
              .get("containers", []) if "readinessProbe" in c]
    assert probes == ["/readyz"]
    image = (DEPLOY / "Containerfile").read_text()
    assert "--require-hashes -r /opt/broker/requirements.lock" in image
    assert "--no-deps /opt/broker" in image


def test_service_managers_wait_longer_than_the_drain() -> None:
    from broker.config import BrokerSection
    from broker.domain.durations import parse_duration

    drain = parse_duration(BrokerSection().drain_timeout).total_seconds()
    unit = re.search(r"^TimeoutStopSec=(\d+)min$", (DEPLOY / "systemd" / "broker.service")
                     .read_text(), re.M)
    assert unit and int(unit.group(1)) * 60 > drain
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for node in ("broker-a", "broker-b"):
        assert parse_duration(compose["services"][node]["stop_grace_period"]).total_seconds() \
            > drain
    kube = [doc for doc in yaml.safe_load_all((DEPLOY / "kubernetes" / "broker.yaml").read_text())
            if doc and doc.get("kind") == "StatefulSet"]
    assert kube and kube[0]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain


def test_the_lock_pins_every_runtime_dependency() -> None:
    """A dependency added to pyproject.toml but not to requirements.lock would make the
    image's hash-checked install fail (google-re2, pyte and uvloop once were missing)."""
    import tomllib

    root = DEPLOY.parent
    wanted = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    lock = (root / "requirements.lock").read_text()
    pinned = {m.lower().replace("_", "-")
              for m in re.findall(r"^([A-Za-z0-9_.-]+)==\S+ \\$", lock, re.M)}
    names = {re.split(r"[\[<>=!~; ]", spec, maxsplit=1)[0].lower().replace("_", "-")
             for spec in wanted}
    assert names - pinned == set()
