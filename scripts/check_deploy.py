"""Checks the deployment files against the binary and the specifications they
follow, without Docker or a Kubernetes cluster. Run by scripts/check-deploy.sh
(which installs the tools imported here), so by `make test`.

Dockerfile
  - the runtime stage is `FROM scratch` with only the `billing` binary and the
    CA certificates copied in, a numeric non-root USER, the binary as the
    ENTRYPOINT;
  - the build stage's Rust is not older than the workspace's rust-version;
  - everything the crates read at build time outside crates/ (proto/,
    migrations/) is copied, and .dockerignore lets it through.

docker-compose.yml
  - valid against the Compose Specification's JSON Schema;
  - every service run from the billing image runs a subcommand the binary has,
    with flags it has, and sets only variables that subcommand reads (as its
    --help declares them); so does every health check that runs the binary;
  - every role the binary has runs in a service; dependencies name services,
    and a `service_healthy` dependency has a health check;
  - the files it mounts exist; Prometheus scrapes the billing services on the
    port they serve metrics on; traces go to the collector's OTLP port.

README.md
  - the Operations section's configuration table lists exactly the variables
    the binary declares (over all its subcommands).

helm/billing
  - `helm lint --strict` and rendering (Helm's own engine) succeed for each
    values file in helm/billing/ci/, and rendering the bare defaults fails
    with the message saying what to set;
  - every rendered object is valid against the Kubernetes API's schema
    (strict: no unknown fields) for the oldest Kubernetes the chart supports
    and the newest the schemas know;
  - the containers run subcommands the binary has and set only variables it
    reads; each role has one Deployment; Services, the HPA, the PDB and the
    ServiceMonitor select what they mean to; Secrets and ConfigMaps referred
    to exist (or are named as existing in the values); the migration Job is a
    pre-install/pre-upgrade hook and what it reads exists before it; probes
    point at ports the containers serve (gRPC health for the api); every pod
    runs non-root with a read-only root file system.

Exit status 1 with one line per problem; each check's name and result
otherwise.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.resources
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

import jsonschema
import yaml

ENV_DECLARATION = re.compile(r"\[env: ([A-Za-z_][A-Za-z0-9_]*)[=\]]")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


class Problems:
    """What the checks found, by check."""

    def __init__(self) -> None:
        self.found: list[str] = []
        self.checks = 0

    def add(self, where: str, message: str) -> None:
        self.found.append(f"{where}: {message}")

    def run(self, name: str, check, *args) -> None:
        before = len(self.found)
        self.checks += 1
        try:
            check(*args)
        except Exception as error:  # a check that cannot run is a failure
            self.add(name, f"the check itself failed: {type(error).__name__}: {error}")
        status = "ok" if len(self.found) == before else f"{len(self.found) - before} problem(s)"
        print(f"  {name}: {status}")


class Binary:
    """What the `billing` binary says of itself in its --help output."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._help: dict[str, str | None] = {}

    def help(self, subcommand: str | None) -> str | None:
        """The --help text of a subcommand (None: the top level); None for a
        subcommand the binary does not have."""
        if subcommand not in self._help:
            argv = [self.path] + ([subcommand] if subcommand else []) + ["--help"]
            # A bare environment: with a variable set, clap prints its value
            # (a secret, say) in the help text.
            done = subprocess.run(
                argv, capture_output=True, text=True, env={"PATH": os.defpath}, timeout=60
            )
            self._help[subcommand] = done.stdout if done.returncode == 0 else None
        return self._help[subcommand]

    def subcommands(self) -> set[str]:
        text = self.help(None) or ""
        section = text.split("Commands:", 1)[1].split("\n\n", 1)[0] if "Commands:" in text else ""
        return {line.split()[0] for line in section.splitlines() if line.strip()} - {"help"}

    def env(self, subcommand: str) -> set[str]:
        return set(ENV_DECLARATION.findall(self.help(subcommand) or ""))

    def flags(self, subcommand: str) -> set[str]:
        return set(FLAG.findall(self.help(subcommand) or ""))

    def roles(self) -> set[str]:
        """The values `serve --roles` takes."""
        text = self.help("serve") or ""
        block = text.split("--roles", 1)[1].split("[env:", 1)[0] if "--roles" in text else ""
        return set(re.findall(r"^\s*- ([a-z]+):", block, re.MULTILINE))


def check_invocation(
    problems: Problems, binary: Binary, where: str, argv: list[str], env: Iterable[str]
) -> None:
    """`billing ARGV` with variables ENV set: a subcommand the binary has,
    flags it takes, variables it reads."""
    if not argv:
        problems.add(where, "runs the binary with no subcommand")
        return
    subcommand = argv[0]
    if subcommand not in binary.subcommands():
        problems.add(
            where,
            f"runs `billing {subcommand}`, which the binary does not have "
            f"(it has {', '.join(sorted(binary.subcommands()))})",
        )
        return
    for arg in argv[1:]:
        flag = arg.split("=", 1)[0]
        if flag.startswith("--") and flag not in binary.flags(subcommand):
            problems.add(where, f"passes {flag}, which `billing {subcommand}` does not take")
    unread = sorted(set(env) - binary.env(subcommand))
    if unread:
        problems.add(
            where,
            f"sets {', '.join(unread)}, which `billing {subcommand}` does not read "
            f"(not declared in `billing {subcommand} --help`)",
        )


def load_yaml(path: Path) -> Any:
    with path.open() as f:
        return yaml.safe_load(f)


# --- Dockerfile ------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments
    dropped."""
    instructions, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, rest = current.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    return instructions


def dockerignore_allows(root: Path, path: str) -> bool:
    """Whether .dockerignore lets `path` into the build context (its patterns
    in order, the last match winning, `!` re-including)."""
    ignore = root / ".dockerignore"
    if not ignore.exists():
        return True
    allowed = True
    for raw in ignore.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) for p in prefixes):
            allowed = negate
    return allowed


def build_inputs(root: Path) -> set[str]:
    """The top-level paths outside crates/ that the crates read at build time:
    include_str!/include_bytes! targets and the build scripts' relative paths."""
    needed = set()
    for source in (root / "crates").rglob("*.rs"):
        if "target" in source.parts:
            continue
        text = source.read_text()
        literals = re.findall(r'include_(?:str|bytes)!\(\s*"([^"]+)"', text)
        base = source.parent
        if source.name == "build.rs":
            literals += re.findall(r'"(\.\./[^"]*)"', text)
            base = source.parent  # a build script runs in its crate's directory
        for literal in literals:
            target = (base / literal).resolve()
            try:
                relative = target.relative_to(root)
            except ValueError:
                continue
            if relative.parts and relative.parts[0] != "crates" and target.exists():
                needed.add(relative.parts[0])
    return needed


def check_dockerfile(problems: Problems, root: Path) -> dict[str, Any]:
    where = "Dockerfile"
    instructions = dockerfile_instructions(root / "Dockerfile")
    stages: list[list[tuple[str, str]]] = []
    args: dict[str, str] = {}
    for keyword, rest in instructions:
        if keyword == "FROM":
            stages.append([])
        if keyword == "ARG" and not stages and "=" in rest:
            name, value = rest.split("=", 1)
            args[name] = value
        if stages:
            stages[-1].append((keyword, rest))
    if len(stages) < 2:
        problems.add(where, "is not multi-stage (a build stage and a runtime stage)")
        return {}
    runtime = stages[-1]
    base = runtime[0][1].split()[0]
    if base != "scratch":
        problems.add(where, f"the runtime stage is FROM {base}, not FROM scratch")

    copied: list[str] = []
    entrypoint: list[str] = []
    user = None
    for keyword, rest in runtime[1:]:
        if keyword == "COPY":
            words = [w for w in rest.split() if not w.startswith("--")]
            if "--from=" not in rest:
                problems.add(where, f"the runtime stage copies from the context: COPY {rest}")
            copied.extend(words[:-1])
        elif keyword == "USER":
            user = rest
        elif keyword == "ENTRYPOINT":
            entrypoint = yaml.safe_load(rest)
        elif keyword in {"RUN", "ADD"}:
            problems.add(where, f"the runtime stage has {keyword}: it holds only the binary and CA certificates")
    extra = [c for c in copied if not (c.endswith("/billing") or c.endswith("ca-certificates.crt"))]
    if extra or not any(c.endswith("/billing") for c in copied):
        problems.add(where, f"the runtime stage copies {copied}: only the billing binary and the CA certificates")
    if user is None or not re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", user):
        problems.add(where, f"USER {user!r}: a numeric non-root uid (so that runAsNonRoot can verify it)")
    if not (isinstance(entrypoint, list) and entrypoint and entrypoint[0].endswith("/billing")):
        problems.add(where, f"ENTRYPOINT {entrypoint!r}: the billing binary, in exec form")

    workspace = tomllib.loads((root / "Cargo.toml").read_text())
    minimum = workspace["workspace"]["package"]["rust-version"]
    rust = args.get("RUST_VERSION")
    if rust is None:
        problems.add(where, "declares no ARG RUST_VERSION")
    elif tuple(map(int, rust.split("."))) < tuple(map(int, minimum.split("."))):
        problems.add(where, f"builds with Rust {rust}, older than the workspace's rust-version {minimum}")

    build_copies = set()
    for stage in stages[:-1]:
        for keyword, rest in stage:
            if keyword == "COPY" and "--from=" not in rest:
                words = [w for w in rest.split() if not w.startswith("--")]
                build_copies.update(w.rstrip("/") for w in words[:-1])
    for needed in sorted(build_inputs(root) | {"Cargo.toml", "Cargo.lock", "crates"}):
        if needed not in build_copies:
            problems.add(where, f"the build reads {needed}/ but the build stage does not copy it")
    for source in sorted(build_copies):
        if not (root / source).exists():
            problems.add(where, f"copies {source}, which the repository does not have")
        elif not dockerignore_allows(root, source):
            problems.add(".dockerignore", f"keeps {source} out of the build context, and the Dockerfile copies it")
    for unwanted in ("target", ".dev", ".git"):
        if dockerignore_allows(root, unwanted):
            problems.add(".dockerignore", f"lets {unwanted}/ into the build context")
    return {"binary": entrypoint[0] if entrypoint else None}


# --- docker-compose.yml ----------------------------------------------------


def compose_schema() -> dict:
    import json

    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text())


def compose_env_names(environment: Any) -> set[str]:
    if isinstance(environment, dict):
        return set(environment)
    if isinstance(environment, list):
        return {item.split("=", 1)[0] for item in environment}
    return set()


def compose_env(environment: Any) -> dict[str, Any]:
    if isinstance(environment, dict):
        return dict(environment)
    if isinstance(environment, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in environment)
    return {}


def as_argv(command: Any) -> list[str]:
    if isinstance(command, str):
        return command.split()
    return list(command or [])


def check_compose(problems: Problems, root: Path, binary: Binary, image: dict[str, Any]) -> None:
    path = root / "docker-compose.yml"
    where = "docker-compose.yml"
    compose = load_yaml(path)

    schema = compose_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    errors = list(validator.iter_errors(compose))
    for error in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path]):
        # A property that fails its own schema also shows up as "unevaluated"
        # in its parent: report only the property's own error.
        deeper = [
            e for e in errors
            if len(e.absolute_path) > len(error.absolute_path)
            and list(e.absolute_path)[: len(error.absolute_path)] == list(error.absolute_path)
        ]
        if error.validator == "unevaluatedProperties" and deeper:
            continue
        location = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        problems.add(where, f"schema: at {location}: {error.message}")

    services: dict[str, dict] = compose.get("services") or {}
    billing_binary = image.get("binary") or "/usr/local/bin/billing"
    roles_run: set[str] = set()
    metrics_ports: set[str] = set()
    otlp_endpoints: set[str] = set()
    billing_services = []
    for name, service in services.items():
        here = f"{where}: service {name}"
        is_billing = "build" in service or str(service.get("image", "")).startswith("billing:")
        if is_billing:
            billing_services.append(name)
            argv = as_argv(service.get("command"))
            if service.get("entrypoint"):
                problems.add(here, "replaces the image's entry point (the billing binary)")
            env = compose_env(service.get("environment"))
            check_invocation(problems, binary, here, argv, env)
            if argv[:1] == ["serve"]:
                for role in str(env.get("BILLING_ROLES", "")).split(","):
                    if role:
                        roles_run.add(role.strip())
                if "BILLING_ROLES" not in env:
                    problems.add(here, "runs `billing serve` without BILLING_ROLES (the default is several roles)")
                if env.get("BILLING_METRICS_ADDR"):
                    metrics_ports.add(str(env["BILLING_METRICS_ADDR"]).rsplit(":", 1)[-1])
                if env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
                    otlp_endpoints.add(str(env["OTEL_EXPORTER_OTLP_ENDPOINT"]))
        test = (service.get("healthcheck") or {}).get("test")
        if isinstance(test, list) and len(test) > 1 and test[0] == "CMD":
            if test[1] in {billing_binary, "billing"}:
                check_invocation(problems, binary, f"{here} healthcheck", list(test[2:]), [])
            elif is_billing:
                problems.add(f"{here} healthcheck", f"runs {test[1]}, and the image has only {billing_binary}")
        if is_billing and isinstance(test, list) and test[:1] == ["CMD-SHELL"]:
            problems.add(f"{here} healthcheck", "needs a shell, and the image has none")
        depends = service.get("depends_on") or {}
        for target in depends if isinstance(depends, (list, dict)) else []:
            if target not in services:
                problems.add(here, f"depends on {target}, which is no service")
                continue
            condition = depends[target].get("condition") if isinstance(depends, dict) else None
            if condition == "service_healthy" and not (services[target].get("healthcheck") or {}).get("test"):
                problems.add(here, f"waits for {target} to be healthy, and {target} has no health check")
            if condition == "service_completed_successfully" and services[target].get("restart") not in {"no", None}:
                problems.add(here, f"waits for {target} to complete, and {target} restarts")
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith("."):
                if not (root / source).exists():
                    problems.add(here, f"mounts {source}, which does not exist")

    missing = binary.roles() - roles_run
    if missing:
        problems.add(where, f"no service runs the role(s) {', '.join(sorted(missing))}")
    unknown = roles_run - binary.roles()
    if unknown:
        problems.add(where, f"BILLING_ROLES names {', '.join(sorted(unknown))}, which the binary does not have")

    # Prometheus scrapes the billing services where they serve metrics.
    prometheus = root / "deploy" / "prometheus.yml"
    if prometheus.exists():
        config = load_yaml(prometheus)
        scraped, ports = set(), set()
        for job in config.get("scrape_configs") or []:
            for sd in job.get("dns_sd_configs") or []:
                scraped.update(sd.get("names") or [])
                ports.add(str(sd.get("port")))
            for static in job.get("static_configs") or []:
                for target in static.get("targets") or []:
                    host = target.rsplit(":", 1)[0]
                    scraped.add(host)
                    if host not in services:
                        problems.add("deploy/prometheus.yml", f"scrapes {target}, and no service is named {host}")
        for name in scraped:
            if name not in services:
                problems.add("deploy/prometheus.yml", f"scrapes {name}, which is no service")
        serve_services = {
            n for n in billing_services if as_argv(services[n].get("command"))[:1] == ["serve"]
        }
        for name in sorted(serve_services - scraped):
            problems.add("deploy/prometheus.yml", f"does not scrape the billing service {name}")
        if metrics_ports and not metrics_ports <= ports:
            problems.add(
                "deploy/prometheus.yml",
                f"scrapes port(s) {sorted(ports)}; the services serve metrics on {sorted(metrics_ports)}",
            )

    # Traces go to the collector's OTLP receiver.
    collector = root / "deploy" / "otel-collector.yaml"
    if collector.exists():
        config = load_yaml(collector)
        pipelines = ((config.get("service") or {}).get("pipelines")) or {}
        for pipeline, spec in pipelines.items():
            for kind in ("receivers", "processors", "exporters"):
                for component in spec.get(kind) or []:
                    if component not in (config.get(kind) or {}):
                        problems.add("deploy/otel-collector.yaml", f"pipeline {pipeline} uses {component}, not defined under {kind}")
        protocols = ((config.get("receivers") or {}).get("otlp") or {}).get("protocols") or {}
        receiver_ports = {
            str(p.get("endpoint", "")).rsplit(":", 1)[-1] for p in protocols.values() if p
        }
        for endpoint in sorted(otlp_endpoints):
            url = urlsplit(endpoint)
            if url.hostname not in services:
                problems.add(where, f"sends traces to {endpoint}, and no service is named {url.hostname}")
            if str(url.port) not in receiver_ports:
                problems.add(where, f"sends traces to port {url.port}; the collector receives OTLP on {sorted(receiver_ports)}")


# --- README.md -------------------------------------------------------------


def check_readme(problems: Problems, root: Path, binary: Binary) -> None:
    where = "README.md (Operations, Configuration)"
    text = (root / "README.md").read_text()
    section = re.search(r"^## Operations\n(.*?)(?=^## )", text + "\n## ", re.MULTILINE | re.DOTALL)
    table = re.search(r"^### Configuration\n(.*?)(?=^### |\Z)", section.group(1) if section else "", re.MULTILINE | re.DOTALL)
    if not table:
        problems.add(where, "no Configuration table under ## Operations")
        return
    listed = set()
    for line in table.group(1).splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            first = line.split("|")[1]
            listed |= set(re.findall(r"`([A-Z][A-Z0-9_]*)`", first))
    declared = set().union(*(binary.env(s) for s in binary.subcommands()))
    if declared - listed:
        problems.add(where, f"does not list {', '.join(sorted(declared - listed))}, which the binary reads")
    if listed - declared:
        problems.add(where, f"lists {', '.join(sorted(listed - declared))}, which the binary does not declare")


# --- helm/billing ----------------------------------------------------------


def kubernetes_versions(chart: dict) -> list[str]:
    """The oldest Kubernetes the chart supports (its kubeVersion) and the
    newest the schemas know."""
    import kubernetes_validate.utils as kv

    newest = kv.latest_version()
    match = re.search(r">=\s*v?(\d+\.\d+)", chart.get("kubeVersion", ""))
    oldest = match.group(1) if match else newest
    return sorted({oldest, kv.major_minor(newest)}, key=lambda v: tuple(map(int, v.split("."))))


def render(chart_dir: Path, values: dict, release: str = "prod", namespace: str = "billing") -> dict[str, str]:
    import helm_python as helm

    with helm.Chart.load(str(chart_dir)) as chart:
        return chart.render(values, name=release, namespace=namespace, is_install=True)


def objects(rendered: dict[str, str]) -> list[tuple[str, dict]]:
    found = []
    for template, text in sorted(rendered.items()):
        if not template.endswith((".yaml", ".yml")):
            continue
        for document in yaml.safe_load_all(text):
            if document:
                found.append((template, document))
    return found


def pod_spec(obj: dict) -> dict | None:
    if obj.get("kind") in {"Deployment", "Job", "StatefulSet", "DaemonSet"}:
        return obj["spec"]["template"]["spec"]
    return None


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_rendered(
    problems: Problems, binary: Binary, label: str, values: dict, found: list[tuple[str, dict]], versions: list[str]
) -> None:
    import kubernetes_validate
    import kubernetes_validate.utils as kv

    where = f"helm/billing ({label})"
    by_kind: dict[str, list[dict]] = {}
    for template, obj in found:
        by_kind.setdefault(obj.get("kind", "?"), []).append(obj)
        name = f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kv.SchemaNotFoundError:
                if obj.get("apiVersion", "").startswith(("monitoring.coreos.com/", "cert-manager.io/")):
                    break  # a CRD's kind: checked by hand below
                problems.add(where, f"{template}: {name}: no such kind in Kubernetes {version}")
            except kv.ValidationError as error:
                location = "/".join(str(p) for p in error.path)
                problems.add(where, f"{template}: {name}: invalid for Kubernetes {version} at {location}: {error.message}")

    secrets = {o["metadata"]["name"]: o for o in by_kind.get("Secret", [])}
    config_maps = {o["metadata"]["name"]: o for o in by_kind.get("ConfigMap", [])}
    def value(*path: str) -> Any:
        node: Any = values
        for key in path:
            node = (node or {}).get(key) if isinstance(node, dict) else None
        return node

    existing_secrets = {
        value("database", "existingSecret"),
        value("jwt", "existingSecret"),
        value("otel", "headersSecret", "name"),
        value("database", "tls", "caSecret"),
        value("database", "tls", "clientCertSecret"),
        value("jwt", "jwksCA", "secret"),
        value("kafka", "sasl", "existingSecret"),
        value("kafka", "tls", "caSecret"),
        value("tls", "grpc", "existingSecret"),
        value("tls", "grpc", "clientCA", "secret"),
        value("tls", "grpc", "clientCA", "probeCertSecret"),
    } - {None, ""}
    # A cert-manager Certificate's Secret exists once cert-manager has issued it.
    existing_secrets |= {c["spec"]["secretName"] for c in by_kind.get("Certificate", [])}
    existing_config_maps = {
        value("existingRateTableConfigMap"),
        value("database", "tls", "caConfigMap"),
        value("jwt", "jwksCA", "configMap"),
        value("kafka", "tls", "caConfigMap"),
        value("tls", "grpc", "clientCA", "configMap"),
    } - {None, ""}

    def hook(obj: dict) -> tuple[set[str], int] | None:
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        if "helm.sh/hook" not in annotations:
            return None
        return set(annotations["helm.sh/hook"].split(",")), int(annotations.get("helm.sh/hook-weight", "0"))

    workloads = by_kind.get("Deployment", []) + by_kind.get("Job", [])
    roles_deployed: dict[str, int] = {}
    for obj in workloads:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        spec = pod_spec(obj)
        template_labels = obj["spec"]["template"]["metadata"].get("labels") or {}
        if obj["kind"] == "Deployment" and not matches(obj["spec"]["selector"]["matchLabels"], template_labels):
            problems.add(where, f"{name}: its selector does not match its pods' labels")
        pod_security = spec.get("securityContext") or {}
        if pod_security.get("runAsNonRoot") is not True:
            problems.add(where, f"{name}: the pod is not runAsNonRoot")
        if spec.get("automountServiceAccountToken") is not False:
            problems.add(where, f"{name}: mounts a service account token it never uses")
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for container in spec["containers"]:
            here = f"{name} container {container['name']}"
            argv = list(container.get("command") or [])[1:] + list(container.get("args") or [])
            env = [e["name"] for e in container.get("env") or []]
            duplicates = sorted({n for n in env if env.count(n) > 1})
            if duplicates:
                problems.add(where, f"{here}: sets {', '.join(duplicates)} more than once")
            check_invocation(problems, binary, f"{where}: {here}", argv, env)
            security = container.get("securityContext") or {}
            if security.get("readOnlyRootFilesystem") is not True:
                problems.add(where, f"{here}: the root file system is not read-only")
            if security.get("allowPrivilegeEscalation") is not False:
                problems.add(where, f"{here}: allows privilege escalation")
            if "ALL" not in ((security.get("capabilities") or {}).get("drop") or []):
                problems.add(where, f"{here}: does not drop all capabilities")
            if not (container.get("resources") or {}).get("requests"):
                problems.add(where, f"{here}: requests no resources")
            values_env = {e["name"]: e for e in container.get("env") or []}
            if obj["kind"] == "Deployment" and argv[:1] == ["serve"]:
                role = (values_env.get("BILLING_ROLES") or {}).get("value", "")
                if "," in role or role not in binary.roles():
                    problems.add(where, f"{here}: BILLING_ROLES is {role!r}, not one role of {sorted(binary.roles())}")
                roles_deployed[role] = roles_deployed.get(role, 0) + 1
            # Secrets and ConfigMaps exist, with the key, before whatever reads them.
            for entry in container.get("env") or []:
                ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    check_secret_ref(problems, where, here, obj, ref["name"], ref["key"], secrets, existing_secrets, hook)
            ports = {p.get("name"): p["containerPort"] for p in container.get("ports") or []}
            for kind in ("readinessProbe", "livenessProbe"):
                probe = container.get(kind)
                if obj["kind"] == "Job":
                    continue
                if not probe:
                    problems.add(where, f"{here}: has no {kind}")
                    continue
                if "grpc" in probe and probe["grpc"]["port"] not in ports.values():
                    problems.add(where, f"{here}: {kind} asks gRPC health on port {probe['grpc']['port']}, which it does not serve")
                if "grpc" in probe and values_env.get("BILLING_GRPC_ADDR", {}).get("value", "").rsplit(":", 1)[-1] != str(probe["grpc"]["port"]):
                    problems.add(where, f"{here}: {kind} asks gRPC health on port {probe['grpc']['port']}, and BILLING_GRPC_ADDR is elsewhere")
                http = probe.get("httpGet")
                if http and http["port"] not in ports and http["port"] not in ports.values():
                    problems.add(where, f"{here}: {kind} asks port {http['port']}, which it does not serve")
                # gRPC health over TLS: the kubelet's gRPC probe speaks
                # plaintext only, so `billing health` asks over https.
                command = (probe.get("exec") or {}).get("command") or []
                tls_health = command[:2] in (["/usr/local/bin/billing", "health"], ["billing", "health"])
                if tls_health:
                    check_invocation(problems, binary, f"{where}: {here} {kind}", command[1:], [])
                    addr = command[command.index("--addr") + 1] if "--addr" in command[:-1] else ""
                    if not addr.startswith("https://") or "BILLING_TLS_CERT" not in values_env:
                        problems.add(where, f"{here}: {kind} runs `billing health` at {addr!r}, and gRPC health over TLS is for a server with BILLING_TLS_CERT")
                    elif addr.rsplit(":", 1)[-1] not in {str(p) for p in ports.values()}:
                        problems.add(where, f"{here}: {kind} asks gRPC health at {addr}, a port it does not serve")
                    elif values_env.get("BILLING_GRPC_ADDR", {}).get("value", "").rsplit(":", 1)[-1] != addr.rsplit(":", 1)[-1]:
                        problems.add(where, f"{here}: {kind} asks gRPC health at {addr}, and BILLING_GRPC_ADDR is elsewhere")
                if "grpc" in probe and "BILLING_TLS_CERT" in values_env:
                    problems.add(where, f"{here}: {kind} is the kubelet's plaintext gRPC probe, and the server speaks TLS only")
                if role_of(obj) == "api" and "grpc" not in probe and not tls_health:
                    problems.add(where, f"{here}: the api's {kind} is not gRPC health")
            for mount in container.get("volumeMounts") or []:
                if mount["name"] not in volumes:
                    problems.add(where, f"{here}: mounts volume {mount['name']}, which the pod does not have")
            rate_table = (values_env.get("BILLING_RATE_TABLE") or {}).get("value")
            if rate_table and not file_from_config_map(rate_table, container, volumes):
                problems.add(where, f"{here}: BILLING_RATE_TABLE={rate_table} is no file of a mounted ConfigMap")
        for volume in volumes.values():
            if "configMap" in volume:
                cm = volume["configMap"]["name"]
                if cm in config_maps:
                    for item in volume["configMap"].get("items") or []:
                        if item["key"] not in config_maps[cm].get("data", {}):
                            problems.add(where, f"{name}: ConfigMap {cm} has no key {item['key']}")
                elif cm not in existing_config_maps:
                    problems.add(where, f"{name}: mounts ConfigMap {cm}, which is neither rendered nor named as existing")
            if "secret" in volume:
                for item in volume["secret"].get("items") or [{"key": None}]:
                    check_secret_ref(problems, where, name, obj, volume["secret"]["secretName"], item["key"], secrets, existing_secrets, hook)
            for source in (volume.get("projected") or {}).get("sources") or []:
                if "secret" in source:
                    for item in source["secret"].get("items") or [{"key": None}]:
                        check_secret_ref(problems, where, name, obj, source["secret"]["name"], item["key"], secrets, existing_secrets, hook)
                if "configMap" in source:
                    cm = source["configMap"]["name"]
                    if cm in config_maps:
                        for item in source["configMap"].get("items") or []:
                            if item["key"] not in config_maps[cm].get("data", {}):
                                problems.add(where, f"{name}: ConfigMap {cm} has no key {item['key']}")
                    elif cm not in existing_config_maps:
                        problems.add(where, f"{name}: mounts ConfigMap {cm}, which is neither rendered nor named as existing")
        # Every file a BILLING_*_FILE, certificate or CA variable names is
        # in a mounted volume (a path no volume holds fails at start-up).
        for container in spec["containers"]:
            mounts = [(m["mountPath"].rstrip("/") + "/", volumes.get(m["name"]) or {}) for m in container.get("volumeMounts") or []]
            for entry in container.get("env") or []:
                path = entry.get("value") or ""
                named = entry["name"]
                if not (named.endswith(("_FILE", "_CERT", "_KEY", "_CA", "_CA_LOCATION")) or named == "BILLING_JWT_PUBLIC_KEY"):
                    continue
                if not path.startswith("/"):
                    continue
                held = [v for prefix, v in mounts if path.startswith(prefix)]
                if not held:
                    problems.add(where, f"{name} container {container['name']}: {named}={path} is in no mounted volume")

    for role in sorted(binary.roles()):
        enabled = role == "api" or (values.get(role) or {}).get("enabled", True)
        count = roles_deployed.get(role, 0)
        if enabled and count != 1:
            problems.add(where, f"role {role}: {count} Deployments, not one")

    jobs = by_kind.get("Job", [])
    migrations = [j for j in jobs if j["spec"]["template"]["spec"]["containers"][0].get("args", [])[:1] == ["migrate"]]
    if (values.get("migrations") or {}).get("enabled", True):
        if len(migrations) != 1:
            problems.add(where, f"{len(migrations)} migration Jobs, not one")
        for job in migrations:
            phases = (hook(job) or (set(), 0))[0]
            if not {"pre-install", "pre-upgrade"} <= phases:
                problems.add(where, f"Job/{job['metadata']['name']}: not a pre-install and pre-upgrade hook ({sorted(phases)})")

    deployments = by_kind.get("Deployment", [])
    for service in by_kind.get("Service", []):
        name = f"Service/{service['metadata']['name']}"
        selected = [d for d in deployments if matches(service["spec"].get("selector") or {}, d["spec"]["template"]["metadata"]["labels"])]
        if not selected:
            problems.add(where, f"{name}: selects no Deployment's pods")
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for deployment in selected:
                served = {p.get("name") for c in pod_spec(deployment)["containers"] for p in c.get("ports") or []}
                served |= {p["containerPort"] for c in pod_spec(deployment)["containers"] for p in c.get("ports") or []}
                if target not in served:
                    problems.add(where, f"{name}: port {port.get('name')} targets {target}, which Deployment/{deployment['metadata']['name']} does not serve")
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        target = hpa["spec"]["scaleTargetRef"]
        found_target = [d for d in deployments if d["metadata"]["name"] == target["name"]]
        if target["kind"] != "Deployment" or not found_target:
            problems.add(where, f"HorizontalPodAutoscaler/{hpa['metadata']['name']}: scales {target['kind']}/{target['name']}, which is not rendered")
        elif "replicas" in found_target[0]["spec"]:
            problems.add(where, f"Deployment/{target['name']}: sets replicas, and an HPA scales it (each upgrade would reset the count)")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        selected = [d for d in deployments if matches(pdb["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"])]
        if [role_of(d) for d in selected] != ["api"]:
            problems.add(where, f"PodDisruptionBudget/{pdb['metadata']['name']}: selects {[d['metadata']['name'] for d in selected]}, not the api alone")
    for certificate in by_kind.get("Certificate", []):
        name = f"Certificate/{certificate['metadata']['name']}"
        spec = certificate.get("spec") or {}
        if certificate.get("apiVersion") != "cert-manager.io/v1":
            problems.add(where, f"{name}: apiVersion {certificate.get('apiVersion')}")
        unknown = set(spec) - {"secretName", "secretTemplate", "issuerRef", "dnsNames", "ipAddresses", "uris", "emailAddresses", "commonName", "duration", "renewBefore", "privateKey", "usages", "subject", "isCA", "keystores", "revisionHistoryLimit", "additionalOutputFormats", "literalSubject", "nameConstraints", "otherNames", "encodeUsagesInRequest", "renewBeforePercentage", "signatureAlgorithm"}
        if unknown:
            problems.add(where, f"{name}: unknown spec fields {sorted(unknown)}")
        if not spec.get("secretName") or not (spec.get("issuerRef") or {}).get("name"):
            problems.add(where, f"{name}: needs spec.secretName and spec.issuerRef.name")
        mounted = any(
            (source.get("secret") or {}).get("name") == spec.get("secretName") or (v.get("secret") or {}).get("secretName") == spec.get("secretName")
            for d in deployments for v in pod_spec(d).get("volumes") or [] for source in ((v.get("projected") or {}).get("sources") or [{}])
        )
        if not mounted:
            problems.add(where, f"{name}: no Deployment mounts its Secret {spec.get('secretName')}")
    for monitor in by_kind.get("ServiceMonitor", []):
        name = f"ServiceMonitor/{monitor['metadata']['name']}"
        if monitor.get("apiVersion") != "monitoring.coreos.com/v1":
            problems.add(where, f"{name}: apiVersion {monitor.get('apiVersion')}")
        selected = [s for s in by_kind.get("Service", []) if matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"].get("labels") or {})]
        if len(selected) != 1:
            problems.add(where, f"{name}: selects {len(selected)} Services, not the metrics Service")
        for endpoint in monitor["spec"].get("endpoints") or []:
            names = {p.get("name") for s in selected for p in s["spec"]["ports"]}
            if endpoint.get("port") not in names:
                problems.add(where, f"{name}: scrapes port {endpoint.get('port')}, which the selected Service does not have")


def role_of(obj: dict) -> str | None:
    return (obj["metadata"].get("labels") or {}).get("app.kubernetes.io/component")


def file_from_config_map(path: str, container: dict, volumes: dict) -> bool:
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount["name"]) or {}
        if "configMap" not in volume or not path.startswith(mount["mountPath"].rstrip("/") + "/"):
            continue
        relative = path[len(mount["mountPath"].rstrip("/")) + 1 :]
        items = volume["configMap"].get("items")
        if items is None or any(item["path"] == relative for item in items):
            return True
    return False


def check_secret_ref(problems, where, here, obj, name, key, secrets, existing, hook) -> None:
    if name in existing:
        return
    secret = secrets.get(name)
    if secret is None:
        problems.add(where, f"{here}: reads Secret {name}, which is neither rendered nor named as existing")
        return
    data = {**(secret.get("data") or {}), **(secret.get("stringData") or {})}
    if key is not None and key not in data:
        problems.add(where, f"{here}: reads key {key} of Secret {name}, which has {sorted(data)}")
    reader, made = hook(obj), hook(secret)
    if reader and "pre-install" in reader[0]:
        if not made or "pre-install" not in made[0] or made[1] >= reader[1]:
            problems.add(where, f"{here}: a pre-install hook reading Secret {name}, which is not made before it")


def check_chart(problems: Problems, root: Path, binary: Binary) -> None:
    import helm_python as helm

    chart_dir = root / "helm" / "billing"
    chart = load_yaml(chart_dir / "Chart.yaml")
    versions = kubernetes_versions(chart)
    print(f"    Kubernetes schemas: {', '.join(versions)}; Helm SDK {helm.helm_sdk_version()}")
    cases = sorted((chart_dir / "ci").glob("*-values.yaml"))
    if not cases:
        problems.add("helm/billing", "no values files in helm/billing/ci/ to render")
    rates = subprocess.run([binary.path, "rates"], capture_output=True, text=True, env={"PATH": os.defpath}, check=True).stdout
    for case in cases:
        label = case.name
        values = load_yaml(case) or {}
        if "rateTable" in values:
            values["rateTable"] = rates  # the real default table, as `billing rates` prints it
        report = helm.lint(str(chart_dir), values, strict=True)
        for message in (report.get("messages") or []):
            if message.get("severity", 0) >= 2:
                problems.add(f"helm/billing ({label})", f"helm lint: {message.get('path')}: {message.get('error')}")
        for error in report.get("errors") or []:
            problems.add(f"helm/billing ({label})", f"helm lint: {error}")
        try:
            found = objects(render(chart_dir, values))
        except Exception as error:
            problems.add(f"helm/billing ({label})", f"does not render: {error}")
            continue
        print(f"    {label}: {len(found)} objects")
        check_rendered(problems, binary, label, values, found, versions)

    # The bare defaults name no database: rendering must stop and say so.
    try:
        render(chart_dir, {})
        problems.add("helm/billing (defaults)", "renders without a database URL or Secret")
    except Exception as error:
        if "database" not in str(error):
            problems.add("helm/billing (defaults)", f"fails, but not for the missing database: {error}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--bin", required=True)
    options = parser.parse_args()
    root = options.root.resolve()
    binary = Binary(options.bin)
    if binary.help(None) is None:
        print(f"check_deploy.py: {options.bin} --help failed", file=sys.stderr)
        return 1

    problems = Problems()
    image: dict[str, Any] = {}
    print("deployment checks:")
    problems.run("Dockerfile", lambda: image.update(check_dockerfile(problems, root)))
    problems.run("docker-compose.yml", check_compose, problems, root, binary, image)
    problems.run("README.md", check_readme, problems, root, binary)
    problems.run("helm/billing", check_chart, problems, root, binary)
    if problems.found:
        print(f"\n{len(problems.found)} problem(s) in the deployment files:", file=sys.stderr)
        for line in problems.found:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"deployment checks: {problems.checks} passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
