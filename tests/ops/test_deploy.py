"""deploy/ and the Dockerfile, checked without Docker: the compose topology and its durability
settings (run for real on a redis-server), the alert rules (promtool), the Grafana dashboard,
and that every metric they name is one flashsale exports."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from engine.core import Engine
from engine.core.redis_client import connect, require_durable
from engine.core.sweeper import SweepTick
from engine.loadgen.services import DURABLE_AOF
from engine.ops import metrics
from engine.ops.instrument import instrument
from engine.tokens import TokenError, check_token, parse_list
from tests.ops.promtext import Samples
from tests.support.servers import free_port, redis_server_binary

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
ALERTS = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
DASHBOARD = json.loads((DEPLOY / "grafana" / "dashboards" / "flashsale.json").read_text())
#: Metrics that come from elsewhere than flashsale: Prometheus itself and redis_exporter (the
#: last three for the cluster profile's shard panels).
EXTERNAL = {"up", "redis_up", "redis_memory_used_bytes", "redis_memory_max_bytes",
            "redis_commands_processed_total", "redis_db_keys", "redis_connected_slaves"}
PROMQL_WORDS = {"sum", "by", "rate", "min", "max", "and", "on", "or", "unless", "time", "histogram_quantile",
                "le", "increase", "without", "avg", "count", "bool", "ignoring", "group_left", "group_right"}
_ENV_DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")


def command(service: str) -> list[str]:
    cmd = SERVICES[service].get("command")
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd or [])


def flag(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


# -- docker-compose.yml -------------------------------------------------------------------------

def test_every_service_has_a_command() -> None:
    assert {"redis", "postgres", "api", "writer", "prometheus"} <= set(SERVICES)
    for name in SERVICES:
        assert command(name), f"service {name} has no command"
        for dep in SERVICES[name].get("depends_on", {}):
            assert dep in SERVICES, f"{name} depends on unknown service {dep}"


def test_redis_keeps_every_acknowledged_write() -> None:
    args = command("redis")
    assert args[0] == "redis-server"
    assert flag(args, "--appendonly") == "yes"
    assert flag(args, "--appendfsync") == "always"
    assert flag(args, "--maxmemory-policy") == "noeviction"
    assert any(v.endswith(":/data") for v in SERVICES["redis"]["volumes"])  # the AOF survives the container


def test_compose_redis_has_the_aof_profile_of_the_demo_and_benchmarks() -> None:
    """What the benchmarks measured is what compose deploys: AOF always, rewrites deferred to 1 GB."""
    args = command("redis")
    pairs = dict(zip(DURABLE_AOF[::2], DURABLE_AOF[1::2], strict=True))
    assert pairs["--auto-aof-rewrite-min-size"] == "1gb"
    assert {name: flag(args, name) for name in pairs} == pairs


@pytest.mark.needs_services  # starts its own redis-server
def test_the_compose_redis_command_passes_the_engines_durability_check(tmp_path: Path) -> None:
    """The same arguments on a real redis-server: what the API and the writer will find."""
    args = [_ENV_DEFAULT.sub(lambda m: m.group(2), a) for a in command("redis")[1:]]
    args[args.index("--dir") + 1] = str(tmp_path)
    port = free_port()
    proc = subprocess.Popen([redis_server_binary(), *args, "--port", str(port), "--bind", "127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port, socket_timeout=1)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                subprocess.run(["sleep", "0.05"], check=True)
        assert client.config_get("maxmemory")["maxmemory"] == str(2 * 1024**3)
        client.close()

        async def check() -> str:
            aclient = connect(f"redis://127.0.0.1:{port}/0", 2.0)
            try:
                return (await require_durable(aclient, allow_volatile=False)).describe()
            finally:
                await aclient.aclose()

        import asyncio

        assert "appendfsync always" in asyncio.run(check())
    finally:
        proc.kill()
        proc.wait(10)


def test_api_runs_two_workers_and_the_writer_persists_to_postgres() -> None:
    api = command("api")
    assert api[0] == "serve" and flag(api, "--workers") == "2" and flag(api, "--host") == "0.0.0.0"
    assert command("writer")[0] == "writer"
    for name in ("api", "writer"):
        env = SERVICES[name]["environment"]
        assert env["FLASHSALE_REDIS_URL"] == "redis://redis:6379/0"
        db = env["FLASHSALE_DATABASE_URL"]
        assert db.startswith("postgresql://") and "@postgres:5432/" in db
        assert SERVICES[name]["build"]["context"] == ".." and (DEPLOY / ".." / "Dockerfile").exists()
    text = (DEPLOY / "docker-compose.yml").read_text()
    assert "--allow-volatile-redis" not in text and "FLASHSALE_ALLOW_VOLATILE_REDIS" not in text
    assert {"redis", "postgres"} <= set(SERVICES["writer"]["depends_on"])


def test_the_env_example_tokens_are_placeholders_the_api_refuses() -> None:
    """A copied env.example cannot start an API with guessable tokens: each is under 16 characters."""
    example = dict(line.split("=", 1) for line in (DEPLOY / "env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    with pytest.raises(TokenError, match="at least 16"):
        parse_list(example["FLASHSALE_STOREFRONT_TOKENS"], "FLASHSALE_STOREFRONT_TOKENS")
    with pytest.raises(TokenError, match="at least 16"):
        check_token(example["FLASHSALE_ADMIN_TOKEN"], "FLASHSALE_ADMIN_TOKEN")


def test_required_settings_are_documented_in_env_example() -> None:
    text = (DEPLOY / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    example = {line.split("=", 1)[0] for line in (DEPLOY / "env.example").read_text().splitlines()
               if line and not line.startswith("#")}
    assert required and required <= example


def test_prometheus_mounts_its_config_and_scrapes_the_api() -> None:
    mounts = {v.split(":")[0]: v.split(":")[1] for v in SERVICES["prometheus"]["volumes"] if v.startswith("./")}
    for src in mounts:
        assert (DEPLOY / src).exists(), src
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config_file = next(a for a in command("prometheus") if a.startswith("--config.file=")).split("=", 1)[1]
    container_dir = Path(config_file).parent
    for rule_file in config["rule_files"]:
        assert str(container_dir / rule_file) in mounts.values(), rule_file
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    api, port = command("api"), flag(command("api"), "--ops-port")
    assert f"api:{port}" in targets and "api:8000" not in targets  # the ops listener, which needs no token
    assert flag(api, "--ops-host") == "0.0.0.0"  # reachable from Prometheus on the compose network
    assert sorted(SERVICES["api"]["ports"]) == sorted(["8000:8000", f"127.0.0.1:{port}:{port}"])  # ops: host only
    assert all("authorization" not in job for job in config["scrape_configs"])
    assert "FLASHSALE_ADMIN_TOKEN" not in str(SERVICES["prometheus"])  # Prometheus holds no credential
    for src in (v.split(":")[0] for v in SERVICES["grafana"]["volumes"] if v.startswith("./")):
        assert (DEPLOY / src).exists(), src


# -- alert rules --------------------------------------------------------------------------------

def _rules() -> list[dict[str, Any]]:
    return [r for g in ALERTS["groups"] for r in g["rules"]]


def test_alert_rules_cover_what_ops_must_hear_about() -> None:
    rules = _rules()
    names = {r["alert"] for r in rules}
    assert {"FlashsaleSoldOut", "FlashsaleLedgerLagHigh", "FlashsaleDeadLetters", "FlashsaleRedisDown",
            "FlashsaleSweeperStalled"} <= names
    for r in rules:
        assert r["labels"]["severity"] in {"info", "warning", "critical"}, r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
        assert re.fullmatch(r"\d+[smh]", str(r.get("for", "0s"))), r["alert"]
        assert r["expr"].count("(") == r["expr"].count(")"), r["alert"]


@pytest.mark.needs_services  # promtool, which make test installs
def test_promtool_checks_and_unit_tests_pass() -> None:
    assert shutil.which("promtool"), "no promtool: run `scripts/ensure-services.sh promtool` (make test does)"
    for args in (["check", "rules", "alerts.yml"], ["check", "config", "prometheus.yml"],
                 ["test", "rules", "alerts.test.yml"]):
        out = subprocess.run(["promtool", *args], cwd=DEPLOY, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr


# -- every metric named in alerts and the dashboard exists --------------------------------------

def metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    words = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", expr))
    return {w for w in words if w not in PROMQL_WORDS and not w.startswith("$")}


@pytest.fixture
async def exported(engine: Engine, sold: str) -> set[str]:
    """Every sample name /metrics carries once each hook has fired (a sale, instrumented)."""
    instrument(engine)
    await engine.expire_due(sold)
    from tests.ops.sale import EngineDriver, definition, run_sale

    d = EngineDriver(engine, "exported")
    await d.load(definition("exported"))
    await run_sale(d)
    from engine.campaign import parse
    from tests.admission.conftest import definition as queued

    await engine.load_campaign(parse(queued("exported-queue")))  # the waiting room's series
    metrics.observe_request("/x", "GET", 200, 0.001)
    metrics.count_outcome("reserve", "OK", 0.001)
    metrics.observe_sweep(SweepTick(at_s=1.0, expired=0, failed=0, completed=True))
    return Samples((await metrics.render(engine)).decode()).names()


async def test_alerts_and_dashboard_name_only_exported_metrics(exported: set[str]) -> None:
    exprs = [r["expr"] for r in _rules()]
    exprs += [t["expr"] for p in DASHBOARD["panels"] for t in p["targets"]]
    exprs.append(DASHBOARD["templating"]["list"][0]["definition"])
    for expr in exprs:
        for name in metric_names(expr.replace("label_values", "")):
            if name in ("campaign",):
                continue
            assert name in exported or name in EXTERNAL, f"{name} (in {expr!r}) is not exported"


# -- Grafana ------------------------------------------------------------------------------------

def test_grafana_dashboard_uses_the_provisioned_datasource_and_panels_do_not_overlap() -> None:
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/flashsale.yml").read_text())["providers"][0]
    assert provider["options"]["path"] in [v.split(":")[1] for v in SERVICES["grafana"]["volumes"]]
    assert ds["url"] == "http://prometheus:9090"
    cells: set[tuple[int, int]] = set()
    for p in DASHBOARD["panels"]:
        assert p["datasource"]["uid"] == ds["uid"], p["title"]
        assert p["targets"] and all(t["datasource"]["uid"] == ds["uid"] for t in p["targets"]), p["title"]
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine
    titles = " ".join(p["title"].lower() for p in DASHBOARD["panels"])
    for what in ("sell-through", "sold per product", "rejections", "ledger", "projected sell-out", "state"):
        assert what in titles, what


# -- Dockerfile ---------------------------------------------------------------------------------

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_builds_one_unprivileged_image_running_flashsale() -> None:
    ins = _instructions()
    assert ins[0] == ("FROM", "python:3.11-slim")
    users = [arg for op, arg in ins if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert [i for i, (op, _) in enumerate(ins) if op == "USER"][-1] > max(
        i for i, (op, arg) in enumerate(ins) if op == "RUN" and "pip install" in arg)
    assert json.loads(next(arg for op, arg in ins if op == "ENTRYPOINT")) == ["flashsale"]
    for op, arg in ins:
        if op == "COPY":
            sources = [a for a in arg.split()[:-1] if not a.startswith("--")]
            for src in sources:
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
    assert "campaigns/yulebao-2014-p1.toml" in " ".join(command("load-campaign"))


def _build_from_docker_copies(tmp_path: Path) -> set[Path]:
    """Build the package (setuptools build_py) from exactly what the Dockerfile copies to /src."""
    src = tmp_path / "src"
    src.mkdir()
    for op, arg in _instructions():
        parts = arg.split()
        if op != "COPY" or not parts[-1].startswith("/src"):
            continue
        dest = src / Path(parts[-1]).relative_to("/src")
        for s in parts[:-1]:
            target = dest / Path(s).name if parts[-1].endswith("/") else dest
            if (ROOT / s).is_dir():
                shutil.copytree(ROOT / s, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / s, target)
    out = subprocess.run([sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py",
                          "--build-lib", str(tmp_path / "lib")], cwd=src, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return {p.relative_to(tmp_path / "lib") for p in (tmp_path / "lib").rglob("*") if p.is_file()}


def test_what_the_dockerfile_copies_builds_the_package_with_the_dashboard(tmp_path: Path) -> None:
    built = _build_from_docker_copies(tmp_path)
    assets = {p.relative_to(ROOT) for p in (ROOT / "engine/ops/static").iterdir()}
    assert Path("engine/ops/static/uPlot.iife.min.js") in assets and assets <= built
    assert Path("engine/lua/reserve.lua") in built and Path("engine/cli.py") in built


def test_every_file_of_the_package_is_installed(tmp_path: Path) -> None:
    built = _build_from_docker_copies(tmp_path)
    wanted = {p.relative_to(ROOT) for p in (ROOT / "engine").rglob("*")
              if p.is_file() and "__pycache__" not in p.parts}
    assert sorted(map(str, wanted - built)) == []
