// Validates the Prometheus Operator objects (monitoring.coreos.com/*: PodMonitor,
// ServiceMonitor) in rendered manifests against the operator's own schema, as packaged by
// @kubernetes-models/prometheus-operator; kubernetes-validate skips these kinds.
//
//   node scripts/monitoring-validate.mjs [--require-monitor] FILE...      (FILE "-" reads stdin)
//
// On top of the package's schema (types, required fields, patterns), it is strict like
// `kubernetes-validate --strict`: a field the schema does not know is an error (read from the
// package's type declarations, following `extends`). It also checks what the schema cannot see
// across objects, i.e. that Prometheus would find targets: a PodMonitor's selector selects the pods
// of a rendered Deployment, and every port it names is a container port of each of them; a
// ServiceMonitor's selector selects a rendered Service whose port it names, and that Service
// selects pods that have the target port; scrapeTimeout is at most the interval. Exit 0 when
// all pass, 1 otherwise; one line per problem.
//
// Needs @kubernetes-models/prometheus-operator and js-yaml in MONITORING_TOOLS_DIR (default
// .tools/node): scripts/install-chart-tools.sh installs them.
import { createRequire } from "node:module";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const toolsDir = process.env.MONITORING_TOOLS_DIR || ".tools/node";
const require = createRequire(path.resolve(toolsDir, "noop.js"));
const yaml = require("js-yaml");
const modelsDir = path.resolve(toolsDir, "node_modules", "@kubernetes-models", "prometheus-operator");
const GROUP = "monitoring.coreos.com";
const KINDS = new Set(["PodMonitor", "ServiceMonitor"]);

const args = process.argv.slice(2);
const requireMonitor = args.includes("--require-monitor");
const files = args.filter((a) => a !== "--require-monitor");
if (files.length === 0) {
  console.error("usage: monitoring-validate.mjs [--require-monitor] FILE... (- for stdin)");
  process.exit(2);
}

const versions = new Map();
async function modelsOf(version) {
  if (!versions.has(version)) {
    const index = path.join(modelsDir, GROUP, version, "index.js");
    versions.set(version, existsSync(index) ? await import(pathToFileURL(index).href) : null);
  }
  return versions.get(version);
}

// --- field sets from the package's .d.ts: file -> {field: nested .d.ts or null} --------------
const interfaces = new Map();
function fieldsOf(dir, file) {
  const key = path.join(dir, file);
  if (interfaces.has(key)) return interfaces.get(key);
  const fields = {};
  interfaces.set(key, fields);
  const text = readFileSync(key, "utf8");
  const imports = new Map();
  for (const m of text.matchAll(/import \{ (\w+) \} from "\.\/([\w.]+)\.js";/g)) {
    imports.set(m[1], m[2] + ".d.ts");
  }
  const head = text.match(/export interface \w+(?: extends ([^{]+))? \{\n([\s\S]*?)\n\}/);
  if (!head) return fields;
  for (const base of (head[1] || "").split(",").map((s) => s.trim()).filter(Boolean)) {
    if (imports.has(base)) Object.assign(fields, fieldsOf(dir, imports.get(base)));
  }
  let depth = 0;
  for (const line of head[2].split("\n")) {
    const m = depth === 0 && line.match(/^ {4}"([^"]+)"\??: (.*?);?$/);
    if (m) {
      const ref = m[2].match(/^(?:Array<)?(\w+)>?$/);
      fields[m[1]] = ref && imports.has(ref[1]) ? imports.get(ref[1]) : null;
    }
    depth += (line.match(/\{/g) || []).length - (line.match(/\}/g) || []).length;
  }
  return fields;
}

function unknownFields(value, dir, file, where, problems) {
  if (value === null || typeof value !== "object") return;
  if (Array.isArray(value)) {
    value.forEach((item, i) => unknownFields(item, dir, file, `${where}[${i}]`, problems));
    return;
  }
  const fields = fieldsOf(dir, file);
  for (const [key, child] of Object.entries(value)) {
    if (!(key in fields)) {
      problems.push(`${where}.${key}: unknown field`);
    } else if (fields[key]) {
      unknownFields(child, dir, fields[key], `${where}.${key}`, problems);
    }
  }
}

// --- Prometheus durations, for scrapeTimeout <= interval --------------------------------------
const UNITS = { y: 31536000, w: 604800, d: 86400, h: 3600, m: 60, s: 1, ms: 0.001 };
function seconds(duration) {
  if (typeof duration !== "string") return undefined;
  let total = 0;
  for (const m of duration.matchAll(/([0-9]+)(ms|y|w|d|h|m|s)/g)) total += Number(m[1]) * UNITS[m[2]];
  return total;
}

// matchLabels only: the chart's selectors use nothing else (matchExpressions is reported).
function selects(selector, labels, where, problems) {
  if (!selector || typeof selector !== "object") return false;
  if (selector.matchExpressions) problems.push(`${where}: matchExpressions is not checked here`);
  const want = Object.entries(selector.matchLabels || {});
  if (want.length === 0) problems.push(`${where}: an empty selector selects everything`);
  return want.every(([k, v]) => (labels || {})[k] === v);
}

// --- read -------------------------------------------------------------------------------------
const docs = [];
for (const file of files) {
  const text = readFileSync(file === "-" ? 0 : file, "utf8");
  for (const doc of yaml.loadAll(text)) {
    if (doc && typeof doc === "object") docs.push({ file, doc });
  }
}
const byKind = (kind) => docs.filter(({ doc }) => doc.kind === kind).map(({ doc }) => doc);
const pods = byKind("Deployment").map((d) => ({
  name: d.metadata?.name,
  labels: d.spec?.template?.metadata?.labels || {},
  ports: new Set(
    (d.spec?.template?.spec?.containers || []).flatMap((c) => (c.ports || []).map((p) => p.name)),
  ),
}));
const services = byKind("Service");

const problems = [];
let count = 0;
for (const { file, doc } of docs) {
  if (typeof doc.apiVersion !== "string" || !doc.apiVersion.startsWith(`${GROUP}/`)) continue;
  count += 1;
  const where = `${file}: ${doc.kind}/${doc.metadata?.name}`;
  const version = doc.apiVersion.slice(GROUP.length + 1);
  const models = await modelsOf(version);
  const Model = models && KINDS.has(doc.kind) ? models[doc.kind] : undefined;
  if (typeof Model !== "function") {
    problems.push(`${where}: kind or version ${doc.apiVersion} not known to this check`);
    continue;
  }
  try {
    new Model(doc).validate();
  } catch (err) {
    problems.push(`${where}: ${err.message}`);
  }
  const dir = path.join(modelsDir, GROUP, version);
  unknownFields(doc.spec, dir, `${doc.kind}Spec.d.ts`, `${where} spec`, problems);
  for (const key of Object.keys(doc)) {
    if (!["apiVersion", "kind", "metadata", "spec"].includes(key)) problems.push(`${where}: unknown field ${key}`);
  }
  const spec = doc.spec || {};
  const endpoints = (doc.kind === "PodMonitor" ? spec.podMetricsEndpoints : spec.endpoints) || [];
  if (endpoints.length === 0) problems.push(`${where}: no endpoints to scrape`);
  endpoints.forEach((e, i) => {
    const interval = seconds(e.interval ?? "30s");
    const timeout = seconds(e.scrapeTimeout ?? "10s");
    if (timeout > interval) problems.push(`${where} endpoint[${i}]: scrapeTimeout ${e.scrapeTimeout} > interval ${e.interval}`);
  });

  // Would Prometheus find targets?
  let targets = [];
  if (doc.kind === "PodMonitor") {
    targets = pods.filter((p) => selects(spec.selector, p.labels, `${where} selector`, problems));
    endpoints.forEach((e, i) => {
      for (const p of targets) {
        if (!p.ports.has(e.port)) problems.push(`${where} endpoint[${i}]: pods of ${p.name} have no port named ${e.port}`);
      }
    });
  } else {
    const selected = services.filter((s) => selects(spec.selector, s.metadata?.labels, `${where} selector`, problems));
    if (selected.length === 0) problems.push(`${where}: its selector selects no rendered Service`);
    for (const service of selected) {
      const servicePorts = service.spec?.ports || [];
      const backing = pods.filter((p) => selects({ matchLabels: service.spec?.selector }, p.labels, `Service/${service.metadata?.name}`, problems));
      if (backing.length === 0) problems.push(`${where}: Service ${service.metadata?.name} selects no rendered pods`);
      targets.push(...backing);
      endpoints.forEach((e, i) => {
        const port = servicePorts.find((p) => p.name === e.port);
        if (!port) {
          problems.push(`${where} endpoint[${i}]: Service ${service.metadata?.name} has no port named ${e.port}`);
          return;
        }
        for (const p of backing) {
          if (typeof port.targetPort === "string" && !p.ports.has(port.targetPort)) {
            problems.push(`${where} endpoint[${i}]: pods of ${p.name} have no port named ${port.targetPort}`);
          }
        }
      });
    }
  }
  if (targets.length === 0) problems.push(`${where}: selects no rendered pods`);
}

if (requireMonitor && count === 0) problems.push("no PodMonitor or ServiceMonitor found");
for (const p of problems) console.error(`monitoring-validate: ${p}`);
if (problems.length) process.exit(1);
console.log(`monitoring-validate: ${count} Prometheus Operator object(s) valid`);
