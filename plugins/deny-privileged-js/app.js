// deny-privileged: a validating Shoal admission plugin written in JavaScript.
//
// Refuses Pods (and the pod templates of Deployments, ReplicaSets,
// StatefulSets, DaemonSets, Jobs, CronJobs and ReplicationControllers) that
// run any container, init container or ephemeral container with
// `securityContext.privileged: true`, and warns about containers that leave
// `allowPrivilegeEscalation` unset. Built into a WebAssembly component of the
// `admission` world (wit/plugin.wit) by componentize-js; see build.sh.
//
// Config (`spec.config`, all optional):
//   {"warnAllowPrivilegeEscalation": true}   // default true

import { write } from "shoal:plugin/log@0.1.0";

let warnEscalation = true;

// Where the pod spec lives in each kind this plugin understands.
const podSpecPaths = {
  Pod: ["spec"],
  Deployment: ["spec", "template", "spec"],
  ReplicaSet: ["spec", "template", "spec"],
  StatefulSet: ["spec", "template", "spec"],
  DaemonSet: ["spec", "template", "spec"],
  Job: ["spec", "template", "spec"],
  ReplicationController: ["spec", "template", "spec"],
  CronJob: ["spec", "jobTemplate", "spec", "template", "spec"],
  PodTemplate: ["template", "spec"],
};

function dig(obj, path) {
  let v = obj;
  for (const p of path) {
    if (v === null || typeof v !== "object") return undefined;
    v = v[p];
  }
  return v;
}

function allow(warnings) {
  return { allowed: true, code: undefined, message: undefined, patch: undefined, warnings };
}

function deny(code, message) {
  return { allowed: false, code, message, patch: undefined, warnings: [] };
}

// Every container of a pod spec with the field path kubectl users know.
function containers(podSpec, base) {
  const out = [];
  for (const field of ["initContainers", "containers", "ephemeralContainers"]) {
    const list = podSpec[field];
    if (!Array.isArray(list)) continue;
    list.forEach((c, i) => {
      if (c && typeof c === "object") {
        out.push({ c, where: `${base}.${field}[${i}]`, name: c.name || `#${i}` });
      }
    });
  }
  return out;
}

export const admissionPolicy = {
  interests() {
    return [];
  },

  configure(config) {
    let parsed;
    try {
      parsed = JSON.parse(config || "{}");
    } catch (e) {
      throw `deny-privileged: config is not valid JSON: ${e.message}`;
    }
    if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
      throw "deny-privileged: config must be a JSON object";
    }
    for (const key of Object.keys(parsed)) {
      if (key !== "warnAllowPrivilegeEscalation") {
        throw `deny-privileged: unknown config field "${key}"`;
      }
    }
    const w = parsed.warnAllowPrivilegeEscalation;
    if (w !== undefined && typeof w !== "boolean") {
      throw "deny-privileged: warnAllowPrivilegeEscalation must be true or false";
    }
    warnEscalation = w === undefined ? true : w;
    write("info", `configured (warn on unset allowPrivilegeEscalation: ${warnEscalation})`);
  },

  observe(_events) {},

  review(request) {
    let req;
    try {
      req = JSON.parse(request);
    } catch (e) {
      return deny(400, `deny-privileged: request is not valid JSON: ${e.message}`);
    }
    const obj = req.object;
    // Deletes carry no object; subresources (status, binding...) change no
    // security context.
    if (obj === null || typeof obj !== "object" || req.subResource) return allow([]);
    const kind = (req.kind && req.kind.kind) || obj.kind;
    const path = podSpecPaths[kind];
    if (!path) return allow([]);
    const podSpec = dig(obj, path);
    if (podSpec === null || typeof podSpec !== "object") return allow([]);

    const base = path.join(".");
    const privileged = [];
    const warnings = [];
    for (const { c, where, name } of containers(podSpec, base)) {
      const sc = c.securityContext || {};
      if (sc.privileged === true) {
        privileged.push(`${name} (${where}.securityContext.privileged)`);
      } else if (warnEscalation && sc.allowPrivilegeEscalation === undefined) {
        warnings.push(
          `container "${name}" does not set securityContext.allowPrivilegeEscalation; ` +
            "set it to false unless the container needs setuid binaries",
        );
      }
    }
    if (privileged.length > 0) {
      const name = (obj.metadata && obj.metadata.name) || req.name || "";
      const what = name ? `${kind} "${name}"` : kind;
      return deny(
        403,
        `${what} runs privileged container${privileged.length > 1 ? "s" : ""}: ` +
          `${privileged.join(", ")}; privileged containers are not allowed`,
      );
    }
    return allow(warnings);
  },
};
