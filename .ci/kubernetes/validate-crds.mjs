// Validates Prometheus Operator resources (ServiceMonitor) against the
// operator's own schemas, as packaged by @kubernetes-models/prometheus-operator
// (kubernetes-validate knows only the built-in kinds).
//   node validate-crds.mjs FILE...
import fs from 'node:fs';
import yaml from 'js-yaml';
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor';

const kinds = { ServiceMonitor };
for (const file of process.argv.slice(2)) {
  for (const doc of yaml.loadAll(fs.readFileSync(file, 'utf8'))) {
    const Kind = kinds[doc.kind];
    if (!Kind) throw new Error(`${file}: no schema for ${doc.apiVersion} ${doc.kind}`);
    new Kind(doc).validate();
    console.log(`${file}: ${doc.kind} ${doc.metadata.name} is valid (${doc.apiVersion})`);
  }
}
