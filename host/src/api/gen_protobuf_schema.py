#!/usr/bin/env python3
"""Generate protobuf_schema.json, the schema table used by protobuf.rs.

The table lets the server turn a Kubernetes protobuf request body
(`application/vnd.kubernetes.protobuf`) into Kubernetes JSON.

Inputs (all read locally, nothing is downloaded):
  * the k8s-pb crate (prost output) in the cargo registry: message names,
    field numbers, wire kinds, repeated/map shapes and nested type paths;
  * the k8s-openapi crate in the cargo registry: the exact JSON field names
    of each definition and the (apiVersion, kind) of each top-level kind;
  * optionally a kubectl binary (a Go program): the runtime type metadata Go
    keeps for reflection holds every API struct with its fields' Go types
    and struct tags. From it we learn which fields are inlined into their
    parent's JSON (`json:",inline"`), which scalars are plain values with
    `omitempty` (Go's protobuf marshaller always writes those, even when
    zero, while Go's JSON leaves them out) and the JSON names again, used to
    cross-check the ones from k8s-openapi.

Rerun (from anywhere) after changing this script; the two crates must be in
the cargo registry. k8s-openapi is a workspace dependency; k8s-pb is not, so if
it is missing, fetch it with a throwaway crate:
`cargo new /tmp/fetch-pb && cd /tmp/fetch-pb && cargo add k8s-pb@=0.9.0 && cargo fetch`.

    python3 host/src/api/gen_protobuf_schema.py            # uses /usr/bin/kubectl when present
    python3 host/src/api/gen_protobuf_schema.py --kubectl /path/to/kubectl
    python3 host/src/api/gen_protobuf_schema.py --no-kubectl   # k8s-openapi heuristics only

The output is written next to this script unless --out is given.
"""

import argparse
import glob
import json
import os
import re
import struct
import sys

# k8s-pb module directory -> protobuf package
PACKAGES = {
    "api/core/v1": "k8s.io.api.core.v1",
    "api/apps/v1": "k8s.io.api.apps.v1",
    "api/batch/v1": "k8s.io.api.batch.v1",
    "api/rbac/v1": "k8s.io.api.rbac.v1",
    "api/coordination/v1": "k8s.io.api.coordination.v1",
    "api/discovery/v1": "k8s.io.api.discovery.v1",
    "api/policy/v1": "k8s.io.api.policy.v1",
    "api/authentication/v1": "k8s.io.api.authentication.v1",
    "api/authorization/v1": "k8s.io.api.authorization.v1",
    "api/autoscaling/v1": "k8s.io.api.autoscaling.v1",
    "api/autoscaling/v2": "k8s.io.api.autoscaling.v2",
    "api/networking/v1": "k8s.io.api.networking.v1",
    "api/scheduling/v1": "k8s.io.api.scheduling.v1",
    "api/storage/v1": "k8s.io.api.storage.v1",
    "apimachinery/pkg/apis/meta/v1": "k8s.io.apimachinery.pkg.apis.meta.v1",
    "apimachinery/pkg/runtime": "k8s.io.apimachinery.pkg.runtime",
    "apimachinery/pkg/util/intstr": "k8s.io.apimachinery.pkg.util.intstr",
    "apimachinery/pkg/api/resource": "k8s.io.apimachinery.pkg.api.resource",
}

META = "k8s.io.apimachinery.pkg.apis.meta.v1"

# Messages whose JSON form is not an object of their fields.
SPECIAL_REPR = {
    META + ".Time": "time",
    META + ".MicroTime": "microTime",
    META + ".Duration": "duration",
    META + ".FieldsV1": "rawJson",
    "k8s.io.apimachinery.pkg.runtime.RawExtension": "rawJson",
    "k8s.io.apimachinery.pkg.api.resource.Quantity": "quantity",
    "k8s.io.apimachinery.pkg.api.resource.QuantityValue": "quantity",
    "k8s.io.apimachinery.pkg.util.intstr.IntOrString": "intOrString",
}

# Kinds that every group version registers (metav1.AddToGroupVersion), so a
# body may carry any apiVersion with them.
ANY_VERSION_KINDS = [
    "DeleteOptions",
    "CreateOptions",
    "UpdateOptions",
    "PatchOptions",
    "GetOptions",
    "ListOptions",
    "Status",
    "WatchEvent",
]

SCALARS = {
    "string", "bytes", "bool", "int32", "int64", "uint32", "uint64",
    "sint32", "sint64", "fixed32", "fixed64", "sfixed32", "sfixed64",
    "double", "float", "enumeration",
}


def norm(name):
    """Case- and underscore-insensitive key used to match names across sources."""
    return name.replace("_", "").lower()


def camel(snake):
    head, *rest = snake.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def find_crate(registry, name):
    hits = sorted(glob.glob(os.path.join(registry, "*", name)))
    if not hits:
        sys.exit(f"cannot find {name} under {registry}; run cargo fetch for it first")
    return hits[-1]


# ---------------------------------------------------------------- k8s-pb

PROST_ATTR = re.compile(r"#\[prost\((.*?)\)\]\s*pub (?:r#)?(\w+):", re.S)


def rust_field_type(body, start):
    """The Rust type that starts at `start`, up to the first comma outside angle brackets."""
    depth = 0
    for i in range(start, len(body)):
        ch = body[i]
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "," and depth == 0:
            return " ".join(body[start:i].split())
    return " ".join(body[start:].split())


def rust_type_to_message(rust_type, module):
    """Resolve a prost Rust type path (relative to `module`) to a protobuf message path."""
    t = rust_type
    for wrapper in ("::core::option::Option<", "::prost::alloc::vec::Vec<", "::prost::alloc::boxed::Box<"):
        t = t.replace(wrapper, "")
    t = t.replace(">", "").strip().rstrip(",").strip()
    parts = [p for p in t.split("::") if p]
    mod = list(module)
    while parts and parts[0] == "super":
        mod.pop()
        parts.pop(0)
    return mod + parts


def parse_k8s_pb(root):
    """Return {rust_module_path_tuple: {rust_struct_name: [field dicts]}}."""
    out = {}
    for moddir in PACKAGES:
        path = os.path.join(root, "src", moddir, "mod.rs")
        src = open(path, encoding="utf-8").read()
        module = tuple(moddir.split("/"))
        structs = {}
        for m in re.finditer(r"pub struct (\w+) \{(.*?)\n\}", src, re.S):
            name, body = m.group(1), m.group(2)
            # drop doc comments so the attribute regex sees attribute + field only
            body = "\n".join(line for line in body.split("\n") if not line.strip().startswith("///"))
            fields = []
            for fm in PROST_ATTR.finditer(body):
                attr, fname = fm.group(1), fm.group(2)
                rtype = rust_field_type(body, fm.end())
                tag = int(re.search(r'tag\s*=\s*"(\d+)"', attr).group(1))
                f = {"number": tag, "snake": fname, "repeated": False}
                mm = re.match(r'(?:btree_)?map\s*=\s*"(\w+),\s*(\w+)"', attr)
                if mm:
                    f["kind"] = "map"
                    f["key"] = mm.group(1)
                    vkind = mm.group(2)
                    if vkind == "message":
                        inner = rtype[rtype.index("<") + 1: rtype.rindex(">")]
                        # BTreeMap<K, V>: the value type follows the first top-level comma
                        depth = 0
                        for i, ch in enumerate(inner):
                            if ch == "<":
                                depth += 1
                            elif ch == ">":
                                depth -= 1
                            elif ch == "," and depth == 0:
                                vt = inner[i + 1:].strip().rstrip(",")
                                break
                        f["value"] = ("message", rust_type_to_message(vt, module))
                    else:
                        f["value"] = (vkind, None)
                else:
                    kind = attr.split(",")[0].strip()
                    kind = kind.split("=")[0].strip()  # bytes = "vec"
                    f["kind"] = kind
                    f["repeated"] = "repeated" in attr
                    if kind == "message":
                        f["message"] = rust_type_to_message(rtype, module)
                    elif kind not in SCALARS:
                        sys.exit(f"unhandled prost kind {attr!r} in {name}")
                fields.append(f)
            structs[name] = fields
        out[module] = structs
    return out


# ---------------------------------------------------------------- k8s-openapi

def parse_k8s_openapi(root):
    """Return ({definition: [json names]}, [(apiVersion, kind, definition)])."""
    versions = sorted(glob.glob(os.path.join(root, "src", "v1_*")),
                      key=lambda p: int(p.rsplit("_", 1)[1]))
    defs = {}
    kinds = []
    # newest last so that it wins
    for vdir in versions:
        for path in glob.glob(os.path.join(vdir, "**", "*.rs"), recursive=True):
            src = open(path, encoding="utf-8").read()
            dm = re.search(r'"(io\.k8s\.[\w.]+)"\.into\(\)', src)
            if not dm:
                continue
            definition = dm.group(1)
            keys = re.findall(r'"([^"]+)" => Field::Key_\w+', src)
            defs[definition] = keys
            rm = re.search(r'const API_VERSION: &\'static str = "([^"]*)";.*?const KIND: &\'static str = "([^"]*)";', src, re.S)
            if rm:
                kinds.append((rm.group(1), rm.group(2), definition))
                lm = re.search(r'const LIST_KIND: &\'static str = "([^"]*)";', src)
                if lm:
                    kinds.append((rm.group(1), lm.group(1), definition + "List"))
    return defs, kinds


# ---------------------------------------------------------------- kubectl (Go type metadata)

class GoBinary:
    """Reads struct types from the reflection metadata of a Go (>= 1.20, amd64, ELF) binary."""

    def __init__(self, path):
        self.d = open(path, "rb").read()
        d = self.d
        if d[:4] != b"\x7fELF" or d[4] != 2:
            raise ValueError("not a 64-bit ELF file")
        shoff = struct.unpack_from("<Q", d, 0x28)[0]
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", d, 0x3A)
        raw = []
        for i in range(shnum):
            name, _typ, _flags, addr, off, size = struct.unpack_from("<IIQQQQ", d, shoff + i * shentsize)
            raw.append((name, addr, off, size))
        strtab = raw[shstrndx][2]
        self.sections = {}
        for name, addr, off, size in raw:
            n = d[strtab + name: d.index(b"\0", strtab + name)].decode()
            self.sections[n] = (addr, off, size)
        if ".typelink" not in self.sections or ".rodata" not in self.sections:
            raise ValueError("no .typelink/.rodata section")
        self.types_base = self.sections[".rodata"][0]

    def off(self, addr):
        for n, (a, o, s) in self.sections.items():
            if a and a <= addr < a + s and n not in (".bss", ".noptrbss"):
                return o + addr - a
        raise ValueError(f"address {addr:#x} outside the file")

    def u8(self, a):
        return self.d[self.off(a)]

    def i32(self, a):
        return struct.unpack_from("<i", self.d, self.off(a))[0]

    def u64(self, a):
        return struct.unpack_from("<Q", self.d, self.off(a))[0]

    def uvarint(self, a):
        x = shift = 0
        while True:
            b = self.u8(a)
            a += 1
            x |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return x, a

    def name(self, a):
        flags = self.u8(a)
        n, p = self.uvarint(a + 1)
        text = self.d[self.off(p): self.off(p) + n].decode()
        tag = ""
        if flags & 2:
            t, p = self.uvarint(p + n)
            tag = self.d[self.off(p): self.off(p) + t].decode()
        return text, tag

    # abi.Type: size 0, ptrdata 8, hash 16, tflag 20, align 21, fieldAlign 22, kind 23,
    # equal 24, gcdata 32, str 40, ptrToThis 44; kind-specific data from 48.
    def kind(self, t):
        return self.u8(t + 23) & 31

    def type_name(self, t):
        text, _ = self.name(self.types_base + self.i32(t + 40))
        return text[1:] if self.u8(t + 20) & 2 else text

    def pkg_path(self, t):
        if not self.u8(t + 20) & 1:  # no uncommon type
            return None
        extra = {25: 32, 22: 8, 23: 8, 17: 24, 21: 8 * 4 + 8}.get(self.kind(t), 0)
        o = self.i32(t + 48 + extra)
        return self.name(self.types_base + o)[0] if o else ""

    def structs(self):
        """{(go package path, type name): [(field name, tag, kind, type name)]}, plus named slices."""
        addr, off, size = self.sections[".typelink"]
        stack = [self.types_base + struct.unpack_from("<i", self.d, off + 4 * i)[0] for i in range(size // 4)]
        seen = set()
        structs, slices = {}, set()
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            k = self.kind(t)
            if k in (22, 23, 17):  # pointer, slice, array
                stack.append(self.u64(t + 48))
                if k == 23 and self.u8(t + 20) & 4:
                    slices.add((self.pkg_path(t), self.type_name(t).split(".")[-1]))
            elif k == 21:  # map
                stack += [self.u64(t + 48), self.u64(t + 56)]
            elif k == 25:  # struct
                fp, fl = self.u64(t + 56), self.u64(t + 64)
                fields = []
                for i in range(fl):
                    f = fp + 24 * i
                    fname, tag = self.name(self.u64(f))
                    ft = self.u64(f + 8)
                    fields.append((fname, tag, self.kind(ft), self.type_name(ft)))
                    stack.append(ft)
                if self.u8(t + 20) & 4:
                    structs[(self.pkg_path(t), self.type_name(t).split(".")[-1])] = fields
        return structs, slices


def go_field_info(fields):
    """{proto field number: {json, omitEmpty, inline}} from Go struct fields."""
    out = {}
    for fname, tag, kind, _tname in fields:
        pm = re.search(r'protobuf:"([^"]*)"', tag)
        if not pm or pm.group(1) == "-":
            continue
        number = int(pm.group(1).split(",")[1])
        jm = re.search(r'json:"([^"]*)"', tag)
        jparts = jm.group(1).split(",") if jm else [fname]
        info = {
            "json": jparts[0] or None,
            "inline": "inline" in jparts[1:],
            # a non-pointer bool/number/string (or []byte) with omitempty: Go JSON drops its zero value
            "omitEmpty": "omitempty" in jparts[1:] and kind in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 23, 24),
        }
        out[number] = info
    return out


# ---------------------------------------------------------------- assembly

def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--registry", default=os.path.expanduser("~/.cargo/registry/src"))
    ap.add_argument("--k8s-pb", help="path of the k8s-pb-0.9.0 crate")
    ap.add_argument("--k8s-openapi", help="path of the k8s-openapi-0.29.0 crate")
    ap.add_argument("--kubectl", default="/usr/bin/kubectl")
    ap.add_argument("--no-kubectl", action="store_true")
    ap.add_argument("--out", default=os.path.join(here, "protobuf_schema.json"))
    args = ap.parse_args()

    pb_root = args.k8s_pb or find_crate(args.registry, "k8s-pb-0.9.0")
    oa_root = args.k8s_openapi or find_crate(args.registry, "k8s-openapi-0.29.0")
    pb = parse_k8s_pb(pb_root)
    oa_defs, oa_kinds = parse_k8s_openapi(oa_root)

    go_structs, go_slices = {}, set()
    if not args.no_kubectl:
        kubectl = os.path.realpath(args.kubectl)
        if not os.path.exists(kubectl):
            sys.exit(f"{args.kubectl} not found: pass --kubectl PATH or --no-kubectl")
        go_structs, go_slices = GoBinary(kubectl).structs()

    # global JSON-name fallback from every k8s-openapi definition
    global_json = {}
    for keys in oa_defs.values():
        for k in keys:
            global_json.setdefault(norm(k), k)

    # proto names: the k8s-pb Rust names lose acronym case (HostIp for HostIP), so recover
    # the real name from k8s-openapi definitions or Go types of the same package.
    def proto_package_of(module):
        return PACKAGES["/".join(module)]

    def go_pkg(package):
        return "k8s.io/" + package[len("k8s.io."):].replace(".", "/")

    real_names = {}
    for module, structs in pb.items():
        package = proto_package_of(module)
        candidates = {}
        for definition in oa_defs:
            if definition.startswith("io.k8s." + package[len("k8s.io."):] + "."):
                short = definition.rsplit(".", 1)[1]
                candidates[norm(short)] = short
        for gp, gname in list(go_structs) + list(go_slices):
            if gp == go_pkg(package):
                candidates.setdefault(norm(gname), gname)
        for rust_name in structs:
            real_names[(module, rust_name)] = package + "." + candidates.get(norm(rust_name), rust_name)

    def resolve(path):
        module, name = tuple(path[:-1]), path[-1]
        if (module, name) not in real_names:
            return None
        return real_names[(module, name)]

    pb_by_name = {real_names[(module, rust_name)]: fields
                  for module, structs in pb.items() for rust_name, fields in structs.items()}
    messages = {}
    warnings = []
    stats = {"go": 0, "openapi": 0, "global": 0, "camel": 0, "go_missing": []}
    for module, structs in pb.items():
        package = proto_package_of(module)
        for rust_name, fields in structs.items():
            full = real_names[(module, rust_name)]
            short = full.rsplit(".", 1)[1]
            oa_keys = oa_defs.get("io." + full.replace("k8s.io.", "k8s.", 1))
            oa_by_norm = {norm(k): k for k in (oa_keys or [])}
            go_fields = go_structs.get((go_pkg(package), short))
            go_info = go_field_info(go_fields) if go_fields is not None else None
            if go_info is None and full not in SPECIAL_REPR:
                stats["go_missing"].append(full)
            entry = {}
            if full in SPECIAL_REPR:
                entry["repr"] = SPECIAL_REPR[full]
            elif (go_pkg(package), short) in go_slices or (
                go_info is None and oa_keys is None and len(fields) == 1
                and fields[0]["snake"] == "items" and fields[0]["number"] == 1 and fields[0]["repeated"]
            ):
                # a Go named slice (e.g. ExtraValue []string) is a message {repeated items = 1} in protobuf
                entry["repr"] = "items"
            out_fields = {}
            for f in fields:
                g = (go_info or {}).get(f["number"])
                snake = f["snake"]
                # JSON name: k8s-openapi per definition, then Go tag, then global k8s-openapi, then camelCase
                if norm(snake) in oa_by_norm:
                    jname = oa_by_norm[norm(snake)]
                    stats["openapi"] += 1
                elif g and g["json"]:
                    jname = g["json"]
                    stats["go"] += 1
                elif norm(snake) in global_json:
                    jname = global_json[norm(snake)]
                    stats["global"] += 1
                    if not (g and g["inline"]):
                        warnings.append(f"{full}.{f['number']}: JSON name {jname!r} from the global k8s-openapi list")
                else:
                    jname = camel(snake)
                    stats["camel"] += 1
                    if not (g and g["inline"]):
                        warnings.append(f"{full}.{f['number']}: JSON name {jname!r} by camelCase")
                if g and g["json"] and g["json"] != jname and not g["inline"]:
                    warnings.append(f"{full}.{f['number']}: k8s-openapi says {jname!r}, Go says {g['json']!r}; using Go")
                    jname = g["json"]
                fo = {"name": jname}
                if f["kind"] == "map":
                    fo["type"] = "map"
                    fo["key"] = f["key"]
                    vkind, vpath = f["value"]
                    fo["value"] = resolve(vpath) if vkind == "message" else vkind
                    if fo["value"] is None:
                        sys.exit(f"{full}.{snake}: unresolved map value type {vpath}")
                elif f["kind"] == "message":
                    target = resolve(f["message"])
                    if target is None:
                        sys.exit(f"{full}.{snake}: unresolved message type {f['message']}")
                    fo["type"] = target
                else:
                    fo["type"] = "enum" if f["kind"] == "enumeration" else f["kind"]
                if f["repeated"]:
                    fo["repeated"] = True
                inline = bool(g and g["inline"])
                if g is None and oa_keys and f["kind"] == "message" and norm(snake) not in oa_by_norm:
                    # no Go data: a message field that is absent from the JSON definition while all
                    # of its own fields are present there is embedded inline
                    inner = pb_by_name.get(resolve(f["message"]), [])
                    if inner and all(norm(x["snake"]) in oa_by_norm for x in inner):
                        inline = True
                        warnings.append(f"{full}.{f['number']}: treated as inline (no Go data)")
                if inline:
                    fo["inline"] = True
                if g and g["omitEmpty"] and f["kind"] in SCALARS and not f["repeated"]:
                    fo["omitEmpty"] = True
                out_fields[str(f["number"])] = fo
            if "repr" not in entry or entry["repr"] == "items":
                entry["fields"] = out_fields
            messages[full] = entry

    known = set(messages)
    kinds = set()
    for api_version, kind, definition in oa_kinds:
        full = definition.replace("io.k8s.", "k8s.io.", 1)
        if full in known:
            kinds.add((api_version, kind, full))
    kinds = [list(k) for k in sorted(kinds)]
    any_kinds = [[k, META + "." + k] for k in ANY_VERSION_KINDS if META + "." + k in known]

    # every referenced type must be present
    for full, entry in messages.items():
        for num, fo in entry.get("fields", {}).items():
            for t in (fo.get("type"), fo.get("value")):
                if t and "." in t and t not in known:
                    sys.exit(f"{full}.{num} refers to {t}, which is not in the table")

    doc = {
        "_comment": "Generated by gen_protobuf_schema.py from k8s-pb 0.9.0, k8s-openapi 0.29.0"
        + (" and kubectl's Go type metadata" if go_structs else "") + "; do not edit by hand.",
        "kinds": kinds,
        "anyVersionKinds": any_kinds,
        "messages": dict(sorted(messages.items())),
    }
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1, sort_keys=False)
        fh.write("\n")
    for w in warnings:
        print("warning:", w, file=sys.stderr)
    print(f"{len(messages)} messages, {len(kinds)} kinds -> {args.out}", file=sys.stderr)
    print(f"json names: openapi={stats['openapi']} go={stats['go']} global={stats['global']} camel={stats['camel']}",
          file=sys.stderr)
    if go_structs and stats["go_missing"]:
        print(f"no Go struct for {len(stats['go_missing'])} messages: {' '.join(sorted(stats['go_missing']))}",
              file=sys.stderr)


if __name__ == "__main__":
    main()
