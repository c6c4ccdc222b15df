// Validates the HTTPRoutes in rendered manifests (multi-document YAML files) offline against the
// Gateway API schema, for scripts/check-deploy:
//   node validate-httproute.mjs --channel standard|experimental [--expect N] FILE...
//
// The schema: @kubernetes-models/gateway-api (npm, pinned in package.json/package-lock.json),
// whose validators are generated from the Go API types of Gateway API v1.5.1
// (sigs.k8s.io/gateway-api, the package's go.mod). Generated from the types, they cover every
// field of both release channels and the types' OpenAPI constraints (enums, patterns, lengths,
// ranges, required fields), but not the CRDs' CEL rules nor unknown fields. So this script adds:
//   - unknown fields: every key must be a field of its type (the types' declarations), as the
//     API server's strict field validation would have it;
//   - the channel: experimental-channel fields of HTTPRoute are refused with --channel standard;
//   - the CEL rules of the HTTPRoute CRD that the chart's route could break: a path prefix or
//     exact path starts with "/", backendRequest is not longer than a non-zero request timeout,
//     a Permanent session cookie needs an absoluteTimeout.
// Exit 1 with one line per problem; 0 with a count of the valid routes.
import { existsSync, readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";
import { HTTPRoute } from "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute";

// HTTPRoute fields of the v1.5 experimental channel only (HTTPRouteRule.sessionPersistence;
// HTTPRouteSpec.useDefaultGateways): path → field.
const EXPERIMENTAL = [
  ["spec.rules[]", "sessionPersistence"],
  ["spec", "useDefaultGateways"],
];

const TYPES = new URL(
  "./node_modules/@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/",
  import.meta.url,
);
const fieldCache = new Map();

/** Fields of a Gateway API type (name → element type or null), or null for a scalar alias. */
function fields(type) {
  if (fieldCache.has(type)) return fieldCache.get(type);
  const file = new URL(`${type}.d.ts`, TYPES);
  let result = null;
  if (existsSync(file)) {
    const text = readFileSync(file, "utf8");
    const start = text.indexOf(`export declare class ${type} `);
    if (start >= 0) {
      const body = text.slice(start, text.indexOf("constructor(", start));
      result = new Map();
      for (const m of body.matchAll(/^\s+"(\w+)"\??: (.+);$/gm)) {
        const ref = m[2].match(/^(?:Array<)?IIoK8sSigsGatewayApiApisV1(\w+)>?$/);
        result.set(m[1], ref ? ref[1] : null);
      }
    }
  }
  fieldCache.set(type, result);
  return result;
}

/** Unknown keys below `value` of Gateway API type `type`. */
function unknownFields(value, type, path, problems) {
  const known = type && fields(type);
  if (!known || value === null || typeof value !== "object") return;
  if (Array.isArray(value)) {
    value.forEach((v, i) => unknownFields(v, type, `${path}[${i}]`, problems));
    return;
  }
  for (const [key, child] of Object.entries(value)) {
    const at = path ? `${path}.${key}` : key;
    if (!known.has(key)) problems.push(`${at}: unknown field of ${type}`);
    else unknownFields(child, known.get(key), at, problems);
  }
}

/** Gateway API duration (GEP-2257) in milliseconds. */
function millis(d) {
  const unit = { h: 3600000, m: 60000, s: 1000, ms: 1 };
  let total = 0;
  for (const [, n, u] of d.matchAll(/([0-9]+)(ms|h|m|s)/g)) total += Number(n) * unit[u];
  return total;
}

function celRules(route, problems) {
  (route.spec?.rules ?? []).forEach((rule, i) => {
    const at = `spec.rules[${i}]`;
    (rule.matches ?? []).forEach((m, j) => {
      const p = m.path;
      if (p && ["PathPrefix", "Exact"].includes(p.type ?? "PathPrefix")) {
        const v = p.value ?? "/";
        if (!v.startsWith("/")) problems.push(`${at}.matches[${j}].path.value: must start with '/'`);
        if (/\/\/|\/\.\.?\/|%2f|#/i.test(v)) problems.push(`${at}.matches[${j}].path.value: must not contain '//', '/./', '/../', '%2f' or '#'`);
      }
    });
    const t = rule.timeouts;
    if (t?.request && t?.backendRequest && millis(t.request) !== 0 && millis(t.backendRequest) > millis(t.request)) {
      problems.push(`${at}.timeouts: backendRequest timeout cannot be longer than request timeout`);
    }
    const sp = rule.sessionPersistence;
    if (sp?.cookieConfig?.lifetimeType === "Permanent" && !sp.absoluteTimeout) {
      problems.push(`${at}.sessionPersistence: AbsoluteTimeout must be specified when cookie lifetimeType is Permanent`);
    }
  });
}

function channelRules(route, channel, problems) {
  if (channel === "experimental") return;
  for (const [path, field] of EXPERIMENTAL) {
    const holders = path === "spec" ? [route.spec ?? {}] : (route.spec?.rules ?? []);
    holders.forEach((h, i) => {
      if (h && field in h) {
        const where = path === "spec" ? "spec" : `spec.rules[${i}]`;
        problems.push(`${where}.${field}: experimental-channel field, not in the standard channel's CRD`);
      }
    });
  }
}

const args = process.argv.slice(2);
let channel = null;
let expect = null;
const files = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--channel") channel = args[++i];
  else if (args[i] === "--expect") expect = Number(args[++i]);
  else files.push(args[i]);
}
if (!["standard", "experimental"].includes(channel) || files.length === 0) {
  console.error("usage: validate-httproute.mjs --channel standard|experimental [--expect N] FILE...");
  process.exit(2);
}

let valid = 0;
let failed = 0;
for (const file of files) {
  for (const doc of parseAllDocuments(readFileSync(file, "utf8"))) {
    const obj = doc.toJS();
    if (!obj || obj.kind !== "HTTPRoute") continue;
    const name = `${file}: HTTPRoute ${obj.metadata?.name ?? "?"}`;
    const problems = [];
    if (obj.apiVersion !== "gateway.networking.k8s.io/v1") {
      problems.push(`apiVersion ${obj.apiVersion}: expected gateway.networking.k8s.io/v1`);
    } else {
      try {
        new HTTPRoute(obj).validate();
      } catch (e) {
        problems.push(...String(e.message).split("\n").filter(Boolean));
      }
      const { metadata: _m, ...rest } = obj;
      unknownFields(rest, "HTTPRoute", "", problems);
      celRules(obj, problems);
      channelRules(obj, channel, problems);
    }
    if (problems.length) {
      failed++;
      for (const p of problems) console.error(`${name}: ${p}`);
    } else {
      valid++;
    }
  }
}
if (failed) process.exit(1);
if (expect !== null && valid !== expect) {
  console.error(`expected ${expect} HTTPRoute(s), found ${valid}`);
  process.exit(1);
}
console.log(`  ${valid} HTTPRoute(s) valid (Gateway API v1.5.1 schema, ${channel} channel)`);
