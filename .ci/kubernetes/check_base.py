"""What the schemas cannot see in the Kubernetes base (deploy/kubernetes):

- kustomization.yaml lists every manifest of the folder (but the example
  Secrets) and nothing else;
- every selector (StatefulSet, Services, PodDisruptionBudget,
  ServiceMonitor) selects what it is meant to, and named ports exist;
- every ConfigMap, Secret and key the pods and the ServiceMonitor use is
  defined (configmap.yaml, secrets.example.yaml);
- the hub configuration in the ConfigMap is accepted by the hub binary
  itself (`inference-hub validate`), with the files it names (secrets,
  certificates, models) laid out in a temporary directory as the pod's
  mounts would lay them, and the environment the StatefulSet sets.

    python3 check_base.py deploy/kubernetes path/to/inference-hub
"""

import glob
import os
import subprocess
import sys
import tempfile

import yaml

base, hub = sys.argv[1], sys.argv[2]
repo = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def load(name):
    with open(os.path.join(base, name)) as f:
        return [d for d in yaml.safe_load_all(f) if d]


kustomization = load("kustomization.yaml")[0]
listed = set(kustomization["resources"])
present = {
    os.path.basename(p)
    for p in glob.glob(os.path.join(base, "*.yaml"))
    if os.path.basename(p) not in ("kustomization.yaml", "secrets.example.yaml")
}
assert listed == present, f"kustomization.yaml lists {sorted(listed)}, the folder has {sorted(present)}"

docs = [d for name in sorted(listed) for d in load(name)]
secrets = {d["metadata"]["name"]: d for d in load("secrets.example.yaml")}
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)
(sts,) = by_kind["StatefulSet"]
pod = sts["spec"]["template"]
pod_labels = pod["metadata"]["labels"]


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


assert selects(sts["spec"]["selector"]["matchLabels"], pod_labels), "StatefulSet selector"
services = {s["metadata"]["name"]: s for s in by_kind["Service"]}
assert sts["spec"]["serviceName"] in services, "StatefulSet serviceName"
(container,) = pod["spec"]["containers"]
port_names = {p["name"] for p in container["ports"]}
for s in services.values():
    assert selects(s["spec"]["selector"], pod_labels), f"Service {s['metadata']['name']} selects no hub"
    for p in s["spec"]["ports"]:
        assert p["targetPort"] in port_names, f"Service port {p}"
for pdb in by_kind["PodDisruptionBudget"]:
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels), "PodDisruptionBudget selector"
for probe in ("readinessProbe", "livenessProbe"):
    assert container[probe]["httpGet"]["path"] == "/health", probe
    assert container[probe]["httpGet"]["port"] in port_names, probe
(monitor,) = by_kind["ServiceMonitor"]
monitored = [s for s in services.values() if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
assert len(monitored) == 1, f"the ServiceMonitor selects {len(monitored)} Services (each hub would be scraped twice)"
for ep in monitor["spec"]["endpoints"]:
    assert ep["port"] in {p["name"] for p in monitored[0]["spec"]["ports"]}, ep["port"]
    refs = [ep["bearerTokenSecret"], ep["tlsConfig"]["ca"]["secret"]]
    for ref in refs:
        assert ref["key"] in secrets[ref["name"]]["stringData"], ref

configmaps = {c["metadata"]["name"]: c for c in by_kind["ConfigMap"]}
mounts = {}
for v in pod["spec"]["volumes"]:
    if "configMap" in v:
        assert v["configMap"]["name"] in configmaps, v
    if "secret" in v:
        assert v["secret"]["secretName"] in secrets, v
for ref in container.get("envFrom", []):
    assert ref["secretRef"]["name"] in secrets, ref

# The hub's own check of the ConfigMap's configuration, with the pod's
# mounts laid out under a temporary root.
with tempfile.TemporaryDirectory() as root:
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    rewrite = {}
    for m in container["volumeMounts"]:
        v = volumes.get(m["name"])
        target = root + m["mountPath"]
        if v is None or "configMap" in v:
            continue
        os.makedirs(target, exist_ok=True)
        rewrite[m["mountPath"]] = target
        for key in secrets[v["secret"]["secretName"]]["stringData"]:
            with open(os.path.join(target, key), "w") as f:
                f.write("a-token-for-the-check")
        if v["secret"]["secretName"] == "inference-hub-tls":
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-nodes", "-days", "1", "-subj", "/CN=inference-hub", "-addext",
                 "subjectAltName=DNS:inference-hub",
                 "-keyout", os.path.join(target, "tls.key"), "-out", os.path.join(target, "tls.crt")],
                check=True, capture_output=True)
            subprocess.run(["cp", os.path.join(target, "tls.crt"), os.path.join(target, "ca.crt")], check=True)
    toml = configmaps["inference-hub"]["data"]["hub.toml"]
    for mount, target in rewrite.items():
        toml = toml.replace(f'"{mount}/', f'"{target}/')
    toml = toml.replace('"/usr/share/inference-hub/models/', f'"{repo}/models/')
    toml = toml.replace('"/var/lib/inference-hub"', f'"{root}/data"')
    config = os.path.join(root, "hub.toml")
    with open(config, "w") as f:
        f.write(toml)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB__")}
    for e in container["env"]:
        env[e["name"]] = "inference-hub-0" if "valueFrom" in e else e["value"]
    for key in secrets["inference-hub-s3"]["stringData"]:
        env[key] = "for-the-check"
    out = subprocess.run([hub, "--config", config, "validate"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, f"the hub refuses the ConfigMap's configuration:\n{out.stdout}{out.stderr}"

print(f"kubernetes base: {len(docs)} resources, selectors, ports, secret keys and the hub's configuration check out")
