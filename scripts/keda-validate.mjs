// Validates the KEDA objects (keda.sh/*) in rendered manifests against KEDA's own schema, as
// packaged by @kubernetes-models/keda; kubernetes-validate skips these kinds.
//
//   node scripts/keda-validate.mjs [--require-keda] FILE...      (FILE "-" reads stdin)
//
// On top of the package's schema (types, required fields, enums), it is strict like
// `kubernetes-validate --strict`: a field the schema does not know is an error (read from the
// package's type declarations). It also checks what the schema cannot see across objects: every
// scaleTargetRef names a Deployment, every authenticationRef a TriggerAuthentication of the same
// render; minReplicaCount <= maxReplicaCount; each trigger of a type this chart uses carries the
// metadata its scaler requires. Exit 0 when all pass, 1 otherwise; one line per problem.
//
// Needs NODE_PATH (or a node_modules above) with @kubernetes-models/keda and js-yaml:
// scripts/install-chart-tools.sh installs them into .tools/node.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const require = createRequire(path.resolve(process.env.KEDA_TOOLS_DIR || ".tools/node", "noop.js"));
const yaml = require("js-yaml");
const modelsDir = path.resolve(process.env.KEDA_TOOLS_DIR || ".tools/node", "node_modules", "@kubernetes-models", "keda");
const keda = await import(pathToFileURL(path.join(modelsDir, "keda.sh", "v1alpha1", "index.js")).href);

const args = process.argv.slice(2);
const requireKeda = args.includes("--require-keda");
const files = args.filter((a) => a !== "--require-keda");
if (files.length === 0) {
  console.error("usage: keda-validate.mjs [--require-keda] FILE... (- for stdin)");
  process.exit(2);
}

// --- field sets from the package's .d.ts: interface name -> {field: nested .d.ts or null} ------
const dtsDir = path.join(modelsDir, "keda.sh", "v1alpha1");
const interfaces = new Map();
function fieldsOf(file) {
  if (interfaces.has(file)) return interfaces.get(file);
  const text = readFileSync(path.join(dtsDir, file), "utf8");
  const imports = new Map();
  for (const m of text.matchAll(/import \{ (\w+) \} from "\.\/([\w.]+)\.js";/g)) {
    imports.set(m[1], m[2] + ".d.ts");
  }
  const body = text.match(/export interface \w+ \{\n([\s\S]*?)\n\}/);
  const fields = {};
  if (body) {
    let depth = 0;
    for (const line of body[1].split("\n")) {
      const m = depth === 0 && line.match(/^ {4}"([^"]+)"\??: (.*?);?$/);
      if (m) {
        const type = m[2];
        const ref = type.match(/^(?:Array<)?(\w+)>?$/);
        fields[m[1]] = ref && imports.has(ref[1]) ? imports.get(ref[1]) : null;
      }
      depth += (line.match(/\{/g) || []).length - (line.match(/\}/g) || []).length;
    }
  }
  interfaces.set(file, fields);
  return fields;
}

function unknownFields(value, file, where, problems) {
  if (value === null || typeof value !== "object") return;
  if (Array.isArray(value)) {
    value.forEach((item, i) => unknownFields(item, file, `${where}[${i}]`, problems));
    return;
  }
  const fields = fieldsOf(file);
  for (const [key, child] of Object.entries(value)) {
    if (!(key in fields)) {
      problems.push(`${where}.${key}: unknown field`);
    } else if (fields[key]) {
      unknownFields(child, fields[key], `${where}.${key}`, problems);
    }
  }
}

// --- what each scaler this chart uses needs ---------------------------------------------------
const SCALERS = {
  "azure-servicebus"(md, auth, problems, where) {
    const queue = "queueName" in md;
    const topic = "topicName" in md || "subscriptionName" in md;
    if (queue === topic) problems.push(`${where}: needs queueName, or topicName and subscriptionName`);
    if (topic && !(md.topicName && md.subscriptionName)) {
      problems.push(`${where}: topicName and subscriptionName go together`);
    }
    if (!/^[1-9][0-9]*$/.test(md.messageCount || "")) problems.push(`${where}: messageCount must be a positive integer`);
    const connection = auth && (auth.spec.secretTargetRef || []).some((r) => r.parameter === "connection");
    if (!connection && !md.namespace && !md.connectionFromEnv) {
      problems.push(`${where}: needs namespace (workload identity) or a connection`);
    }
    if (!auth && !md.connectionFromEnv) problems.push(`${where}: needs an authenticationRef`);
  },
  "redis-streams"(md, auth, problems, where) {
    if (!md.stream) problems.push(`${where}: needs stream`);
    if (!md.address && !md.host && !md.addressFromEnv) problems.push(`${where}: needs address or host`);
    const targets = ["streamLength", "pendingEntriesCount", "lagCount"].filter((k) => k in md);
    if (targets.length !== 1) problems.push(`${where}: needs exactly one of streamLength, pendingEntriesCount, lagCount`);
    if (("pendingEntriesCount" in md || "lagCount" in md) && !md.consumerGroup) {
      problems.push(`${where}: pendingEntriesCount and lagCount need consumerGroup`);
    }
  },
};

// --- read -------------------------------------------------------------------------------------
const docs = [];
for (const file of files) {
  const text = readFileSync(file === "-" ? 0 : file, "utf8");
  for (const doc of yaml.loadAll(text)) {
    if (doc && typeof doc === "object") docs.push({ file, doc });
  }
}

const problems = [];
const byKind = (kind) => docs.filter(({ doc }) => doc.kind === kind).map(({ doc }) => doc);
const names = (kind) => new Set(byKind(kind).map((d) => d.metadata?.name));
const deployments = names("Deployment");
const auths = new Map(byKind("TriggerAuthentication").map((d) => [d.metadata?.name, d]));

let count = 0;
for (const { file, doc } of docs) {
  if (typeof doc.apiVersion !== "string" || !doc.apiVersion.startsWith("keda.sh/")) continue;
  count += 1;
  const where = `${file}: ${doc.kind}/${doc.metadata?.name}`;
  const Model = doc.apiVersion === "keda.sh/v1alpha1" ? keda[doc.kind] : undefined;
  if (typeof Model !== "function") {
    problems.push(`${where}: unknown KEDA kind or version ${doc.apiVersion}`);
    continue;
  }
  try {
    new Model(doc).validate();
  } catch (err) {
    problems.push(`${where}: ${err.message}`);
  }
  const specFile = `${doc.kind}Spec.d.ts`;
  unknownFields(doc.spec, specFile, `${where} spec`, problems);
  for (const key of Object.keys(doc)) {
    if (!["apiVersion", "kind", "metadata", "spec"].includes(key)) problems.push(`${where}: unknown field ${key}`);
  }
  if (doc.kind !== "ScaledObject") continue;
  const spec = doc.spec || {};
  const target = spec.scaleTargetRef || {};
  if ((target.kind || "Deployment") === "Deployment" && !deployments.has(target.name)) {
    problems.push(`${where}: scaleTargetRef names Deployment ${target.name}, which is not rendered`);
  }
  const min = spec.minReplicaCount ?? 0;
  const max = spec.maxReplicaCount ?? 100;
  if (min > max) problems.push(`${where}: minReplicaCount ${min} > maxReplicaCount ${max}`);
  (spec.triggers || []).forEach((trigger, i) => {
    const at = `${where} trigger[${i}] ${trigger.type}`;
    const md = trigger.metadata || {};
    for (const [k, v] of Object.entries(md)) {
      if (typeof v !== "string") problems.push(`${at}: metadata.${k} must be a string`);
    }
    let auth;
    if (trigger.authenticationRef) {
      const kind = trigger.authenticationRef.kind || "TriggerAuthentication";
      auth = kind === "TriggerAuthentication" ? auths.get(trigger.authenticationRef.name) : undefined;
      if (kind === "TriggerAuthentication" && !auth) {
        problems.push(`${at}: authenticationRef names TriggerAuthentication ${trigger.authenticationRef.name}, which is not rendered`);
      }
    }
    const check = SCALERS[trigger.type];
    if (check) check(md, auth, problems, at);
    else problems.push(`${at}: scaler type not known to this check`);
  });
}

if (requireKeda && count === 0) problems.push("no KEDA object found");
for (const p of problems) console.error(`keda-validate: ${p}`);
if (problems.length) process.exit(1);
console.log(`keda-validate: ${count} KEDA object(s) valid`);
