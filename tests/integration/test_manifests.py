"""The deployment files: deploy/kubernetes/*.yaml parse and hang together
(kinds, selectors, probes on the admin port's paths, ports that match
proxy.ini, grace period above drain_timeout, non-root and read-only), the
ConfigMap's proxy.ini and the image's default config pass `imapfront -t`,
and the Dockerfile agrees with both (ENTRYPOINT config path, user,
exposed ports, health check). The Dockerfile's steps themselves are proved
by tests/deploy/check_container.sh (needs root and minutes)."""

import configparser
import glob
import json
import os
import re
import shutil
import subprocess
import tempfile

import pytest

import imapfront_harness as h

yaml = pytest.importorskip("yaml", reason="python3-yaml is needed to check the manifests")

DEPLOY = os.path.join(h.SRC, "deploy")
K8S = os.path.join(DEPLOY, "kubernetes")
DOCKERFILE = os.path.join(h.SRC, "Dockerfile")
API = {"ConfigMap": "v1", "Secret": "v1", "Service": "v1", "Deployment": "apps/v1",
       "PodDisruptionBudget": "policy/v1"}


@pytest.fixture(scope="module")
def docs():
    files = sorted(glob.glob(os.path.join(K8S, "*.yaml")))
    assert files, "no manifests in %s" % K8S
    out = []
    for path in files:
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if doc is not None:
                    doc["__file__"] = os.path.basename(path)
                    out.append(doc)
    return out


def one(docs, kind):
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, "%d %s manifests" % (len(found), kind)
    return found[0]


def ini_of(text):
    cp = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";",),
                                   comment_prefixes=(";", "#"), strict=True)
    cp.optionxform = str
    cp.read_string(text)
    return cp


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def seconds(duration):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)?", duration.strip())
    assert m, duration
    n = int(m.group(1))
    return n * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[m.group(2)]


def dockerfile():
    """[(stage name, base, [(INSTRUCTION, rest)])] with continued lines
    joined and comments dropped."""
    stages, cur = [], ""
    with open(DOCKERFILE) as f:
        for raw in f:
            line = raw.rstrip("\n")
            if line.lstrip().startswith("#") or (not cur and not line.strip()):
                continue
            if line.endswith("\\"):
                cur += line[:-1] + " "
                continue
            word, _, rest = (cur + line).strip().partition(" ")
            cur = ""
            if word.upper() == "FROM":
                parts = rest.split()
                stages.append((parts[2] if len(parts) == 3 else str(len(stages)), parts[0], []))
            else:
                stages[-1][2].append((word.upper(), rest.strip()))
    return stages


def instr(stage, word):
    return [rest for w, rest in stage[2] if w == word]


def container(docs):
    dep = one(docs, "Deployment")
    containers = dep["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, containers
    return containers[0]


def named_port(c, ref):
    """A probe's or Service's port (name or number) as a containerPort."""
    for p in c["ports"]:
        if ref in (p.get("name"), p["containerPort"]):
            return p["containerPort"]
    raise AssertionError("no container port %r in %r" % (ref, c["ports"]))


@pytest.fixture(scope="module")
def cluster_ini(docs):
    return ini_of(one(docs, "ConfigMap")["data"]["proxy.ini"])


def test_every_manifest_is_well_formed(docs):
    kinds = [d["kind"] for d in docs]
    assert {"ConfigMap", "Secret", "Deployment", "Service"} <= set(kinds), kinds
    for d in docs:
        assert d["kind"] in API, (d["__file__"], d["kind"])
        assert d["apiVersion"] == API[d["kind"]], (d["__file__"], d["apiVersion"])
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", d["metadata"]["name"]), d["metadata"]
        assert "namespace" not in d["metadata"], "leave the namespace to kubectl -n"


def test_selectors_match_the_pods(docs):
    dep = one(docs, "Deployment")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    wanted = dep["spec"]["selector"]["matchLabels"]
    assert wanted.items() <= pod_labels.items()
    svc = one(docs, "Service")
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    for pdb in (d for d in docs if d["kind"] == "PodDisruptionBudget"):
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        assert pdb["spec"]["minAvailable"] < dep["spec"]["replicas"]


def test_deployment_replicas_probes_and_ports(docs, cluster_ini):
    dep = one(docs, "Deployment")
    assert dep["spec"]["replicas"] >= 3
    c = container(docs)
    admin = port_of(cluster_ini["admin"]["address"])
    ready, live = c["readinessProbe"]["httpGet"], c["livenessProbe"]["httpGet"]
    assert ready["path"] == "/readyz" and named_port(c, ready["port"]) == admin, ready
    assert live["path"] == "/healthz" and named_port(c, live["port"]) == admin, live
    listeners = [s for s in cluster_ini.sections() if s.startswith("listen.")]
    assert listeners
    for s in listeners:
        port = port_of(cluster_ini[s]["address"])
        assert port > 1024, "the image runs unprivileged: %s needs a port above 1024" % s
        assert port in [p["containerPort"] for p in c["ports"]], (s, c["ports"])
    # Resources: requests and limits for cpu and memory.
    for k in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][k]), c["resources"]


def test_grace_period_covers_drain(docs, cluster_ini):
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    drain = seconds(cluster_ini["proxy"].get("drain_timeout", "30s"))
    pre = 0
    cmd = container(docs).get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    if cmd and cmd[0] == "sleep":
        pre = float(cmd[1])
    assert pod["terminationGracePeriodSeconds"] > drain + pre, (pod, drain, pre)


def test_pod_is_non_root_and_read_only(docs):
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = container(docs)
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    assert psc.get("runAsNonRoot") is True
    assert psc.get("runAsUser", 0) != 0
    assert csc.get("readOnlyRootFilesystem") is True
    assert csc.get("allowPrivilegeEscalation") is False
    assert "ALL" in csc.get("capabilities", {}).get("drop", [])


def test_config_and_certificate_mounts(docs, cluster_ini):
    c = container(docs)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    entry = json.loads(instr(dockerfile()[-1], "ENTRYPOINT")[0])
    config_path = entry[entry.index("-c") + 1]
    m = mounts[config_path]
    cm = one(docs, "ConfigMap")
    assert volumes[m["name"]]["configMap"]["name"] == cm["metadata"]["name"]
    assert m["subPath"] in cm["data"]
    secret = one([d for d in docs if d.get("type") == "kubernetes.io/tls"], "Secret")
    keys = set(secret.get("data", {})) | set(secret.get("stringData", {}))
    assert keys == {"tls.crt", "tls.key"}, keys
    cert, key = cluster_ini["tls"]["certificate"], cluster_ini["tls"]["private_key"]
    assert os.path.dirname(cert) == os.path.dirname(key)
    m = mounts[os.path.dirname(cert)]
    assert volumes[m["name"]]["secret"]["secretName"] == secret["metadata"]["name"]
    assert "subPath" not in m, "a subPath mount would never see a renewed certificate"
    assert {os.path.basename(cert), os.path.basename(key)} == keys


def test_check_password_comes_from_a_secret(docs, cluster_ini):
    """check_password_file names a key of an Opaque Secret mounted without
    subPath, readable by the pod's group only; no password in the
    ConfigMap."""
    backend = cluster_ini["backend"]
    assert "check_password" not in backend
    path = backend["check_password_file"]
    c = container(docs)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    m = {m["mountPath"]: m for m in c["volumeMounts"]}[os.path.dirname(path)]
    assert "subPath" not in m and m["readOnly"]
    vol = volumes[m["name"]]["secret"]
    secret = [d for d in docs if d["kind"] == "Secret"
              and d["metadata"]["name"] == vol["secretName"]]
    assert len(secret) == 1 and secret[0]["type"] == "Opaque", secret
    assert os.path.basename(path) in secret[0].get("stringData", secret[0].get("data", {}))
    assert vol["defaultMode"] & 0o007 == 0, "the password must not be world-readable"
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]


def test_admin_endpoint_names_who_may_connect(cluster_ini):
    assert cluster_ini["admin"]["allow_from"].strip()


def test_service_sends_proxy_protocol_to_the_listener(docs, cluster_ini):
    svc = one(docs, "Service")
    assert svc["spec"]["type"] == "LoadBalancer"
    assert any("proxy-protocol" in k or "proxyprotocol" in k
               for k in svc["metadata"].get("annotations", {})), svc["metadata"]
    c = container(docs)
    listener_ports = {port_of(cluster_ini[s]["address"]): s for s in cluster_ini.sections()
                      if s.startswith("listen.")}
    for p in svc["spec"]["ports"]:
        target = named_port(c, p["targetPort"])
        section = cluster_ini[listener_ports[target]]
        assert section.get("proxy_protocol", "off") != "off", section.name
        assert section.get("proxy_protocol_from", "").strip(), section.name
    admin = port_of(cluster_ini["admin"]["address"])
    assert admin not in [named_port(c, p["targetPort"]) for p in svc["spec"]["ports"]], \
        "the admin endpoint has no authentication: keep it off the LoadBalancer"


def checks_ok(text, cert):
    """imapfront -t on text with its certificate paths replaced."""
    text = re.sub(r"(?m)^(certificate\s*=\s*)\S+", lambda m: m.group(1) + cert[0], text)
    text = re.sub(r"(?m)^(private_key\s*=\s*)\S+", lambda m: m.group(1) + cert[1], text)
    d = tempfile.mkdtemp(prefix="manifest-")
    secret = os.path.join(d, "secret")
    with open(secret, "w") as f:
        f.write("placeholder\n")
    text = re.sub(r"(?m)^(\w+_file\s*=\s*)\S+", lambda m: m.group(1) + secret, text)
    try:
        path = os.path.join(d, "proxy.ini")
        with open(path, "w") as f:
            f.write(text)
        r = subprocess.run([h.BIN, "-t", "-c", path], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=30)
        return r.returncode, r.stdout.decode()
    finally:
        shutil.rmtree(d)


def test_configmap_proxy_ini_passes_check(docs, cert, need_bin):
    rc, out = checks_ok(one(docs, "ConfigMap")["data"]["proxy.ini"], cert)
    assert rc == 0, out


def test_image_default_config_passes_check(cert, need_bin):
    with open(os.path.join(DEPLOY, "proxy.ini")) as f:
        rc, out = checks_ok(f.read(), cert)
    assert rc == 0, out


def test_dockerfile_agrees_with_the_configs(docs):
    stages = dockerfile()
    assert len(stages) >= 2, "a build stage and a runtime stage"
    assert all(base == "debian:12" for _, base, _ in stages), stages
    runtime = stages[-1]
    entry = json.loads(instr(runtime, "ENTRYPOINT")[0])
    assert entry[:2] == ["imapfront", "-c"] and entry[2] == "/etc/imapfront/proxy.ini", entry
    # The build stage builds a release without tests; the runtime stage
    # installs no development package and copies the binary over.
    build_runs = " ".join(instr(stages[0], "RUN"))
    assert "meson setup build --buildtype=release -Dtests=disabled" in build_runs
    assert "ninja -C build" in build_runs
    runtime_runs = " ".join(instr(runtime, "RUN"))
    assert not re.search(r"\S+-dev\b|\bmeson\b|\bgcc\b|build-essential", runtime_runs), \
        runtime_runs
    for lib in ("libuv1", "libinih1", "android-libboringssl", "libmicrohttpd12", "zlib1g",
                "libhiredis0.14"):
        assert re.search(r"\b%s\b" % re.escape(lib), runtime_runs), lib
    assert any(r.startswith("--from=") for r in instr(runtime, "COPY"))
    # Non-root, as the Deployment says.
    user = instr(runtime, "USER")[-1]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, user
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(uid)
    assert instr(runtime, "STOPSIGNAL") == ["SIGTERM"]
    # The default config's ports are exposed; the health check asks /healthz
    # on its admin port.
    with open(os.path.join(DEPLOY, "proxy.ini")) as f:
        default = ini_of(f.read())
    exposed = {int(p) for r in instr(runtime, "EXPOSE") for p in r.split()}
    admin = port_of(default["admin"]["address"])
    listen = {port_of(default[s]["address"]) for s in default.sections()
              if s.startswith("listen.")}
    assert listen | {admin} <= exposed, (exposed, listen, admin)
    env = dict(kv.split("=", 1) for r in instr(runtime, "ENV") for kv in r.split())
    health = instr(runtime, "HEALTHCHECK")[0]
    assert "/healthz" in health, health
    assert "IMAPFRONT_ADMIN_PORT" in health and env["IMAPFRONT_ADMIN_PORT"] == str(admin), env
    assert default["tls"]["certificate"].startswith("/etc/imapfront/tls/")


# pkg-config names in meson.build -> (build package, runtime package).
DEBIAN = {
    "libuv": ("libuv1-dev", "libuv1"),
    "inih": ("libinih-dev", "libinih1"),
    "libmicrohttpd": ("libmicrohttpd-dev", "libmicrohttpd12"),
    "zlib": ("zlib1g-dev", "zlib1g"),
    "hiredis": ("libhiredis-dev", "libhiredis0.14"),
}
NOT_IN_RELEASE = {"threads", "cmocka"}  # part of libc; tests only


def test_dockerfile_installs_every_meson_dependency():
    """A dependency added to meson.build must reach both stages of the
    image (the container check would only notice it when run by hand)."""
    with open(os.path.join(h.SRC, "meson.build")) as f:
        names = set(re.findall(r"(?<![.\w])dependency\(\s*'([^']+)'", f.read()))
    stages = dockerfile()
    build_runs = " ".join(instr(stages[0], "RUN"))
    runtime_runs = " ".join(instr(stages[-1], "RUN"))
    for name in sorted(names - NOT_IN_RELEASE):
        assert name in DEBIAN, ("meson.build needs %r: add its Debian packages to the "
                                "Dockerfile and to DEBIAN in this test" % name)
        dev, lib = DEBIAN[name]
        assert re.search(r"(?<![\w.-])%s(?![\w.-])" % re.escape(dev), build_runs), dev
        assert re.search(r"(?<![\w.-])%s(?![\w.-])" % re.escape(lib), runtime_runs), lib
    # BoringSSL is found by path, not by dependency().
    assert "android-libboringssl-dev" in build_runs
