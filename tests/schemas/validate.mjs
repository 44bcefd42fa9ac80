// Validates Kubernetes custom resources against the JSON schemas of their operators' CRDs, as the @kubernetes-models
// packages carry them (generated from each operator's CRDs; package.json pins the versions). Reads a JSON array of
// objects on stdin; prints a JSON array with, for each, {kind, name, checked, errors}: checked is false when no
// package here carries that apiVersion and kind (the caller decides whether that is allowed).
import { readFileSync } from "node:fs";

const PACKAGES = {
  "kafka.strimzi.io": "@kubernetes-models/strimzi-kafka-operator",
  "keda.sh": "@kubernetes-models/keda",
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
};

const docs = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const doc of docs) {
  const [group, version] = doc.apiVersion.includes("/") ? doc.apiVersion.split("/") : ["", doc.apiVersion];
  const name = doc.metadata?.name ?? "";
  const pkg = PACKAGES[group];
  if (!pkg) {
    results.push({ kind: doc.kind, name, checked: false, errors: [] });
    continue;
  }
  let Model;
  try {
    Model = (await import(`${pkg}/${group}/${version}/${doc.kind}`))[doc.kind];
  } catch (error) {
    results.push({ kind: doc.kind, name, checked: false, errors: [`no schema: ${error.message}`] });
    continue;
  }
  try {
    new Model(doc).validate();
    results.push({ kind: doc.kind, name, checked: true, errors: [] });
  } catch (error) {
    const details = (error.errors ?? []).map((e) => `${e.instancePath || "/"} ${e.message} ${JSON.stringify(e.params)}`);
    results.push({ kind: doc.kind, name, checked: true, errors: details.length ? details : [String(error.message)] });
  }
}
process.stdout.write(JSON.stringify(results));
