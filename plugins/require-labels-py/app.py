"""require-labels: a validating Shoal admission plugin written in Python.

Refuses objects that lack any of the labels named in the plugin's config,
`{"labels": ["team", "app"]}`, and says which ones are missing. Built into a
WebAssembly component of the `admission` world (wit/plugin.wit) by
componentize-py; see build.sh.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports.admission_policy import AdmissionResponse
from wit_world.imports import log

# Set by configure(); the host calls it once per instance before any review.
_required: list = []


def _config_error(message: str) -> Err:
    return Err("require-labels: " + message)


def _parse_config(config: str) -> list:
    """The label names from the plugin's `spec.config` JSON; raises Err."""
    try:
        parsed = json.loads(config or "{}")
    except ValueError as e:
        raise _config_error("config is not valid JSON: %s" % e)
    if not isinstance(parsed, dict):
        raise _config_error('config must be an object like {"labels": ["team"]}')
    unknown = sorted(k for k in parsed if k != "labels")
    if unknown:
        raise _config_error("unknown config field(s): " + ", ".join(unknown))
    labels = parsed.get("labels", [])
    if not isinstance(labels, list) or not all(
        isinstance(name, str) and name for name in labels
    ):
        raise _config_error('"labels" must be a list of non-empty strings')
    # Keep the configured order (it is the order of the message), once each.
    seen = set()
    return [n for n in labels if not (n in seen or seen.add(n))]


def _describe(request: dict, obj: dict) -> str:
    """`Kind "name"` (or `Kind` alone when the name is not known yet)."""
    kind = (request.get("kind") or {}).get("kind") or obj.get("kind") or "object"
    meta = obj.get("metadata") or {}
    name = meta.get("name") or request.get("name") or ""
    if not name and meta.get("generateName"):
        name = meta["generateName"] + "*"
    return '%s "%s"' % (kind, name) if name else kind


class AdmissionPolicy(exports.AdmissionPolicy):
    """The exported `admission-policy` interface."""

    def interests(self) -> list:
        # Decides on the request's own object; needs no view of the cluster.
        return []

    def configure(self, config: str) -> None:
        global _required
        _required = _parse_config(config)
        log.write(log.Level.INFO, "requiring labels: " + ", ".join(_required))

    def observe(self, events) -> None:
        pass

    def review(self, request: str) -> AdmissionResponse:
        try:
            req = json.loads(request)
        except ValueError as e:
            return AdmissionResponse(
                False, 400, "require-labels: request is not valid JSON: %s" % e, None, []
            )
        obj = req.get("object")
        # Deletes and connects carry no object to check.
        if not isinstance(obj, dict) or not _required:
            return AdmissionResponse(True, None, None, None, [])
        labels = (obj.get("metadata") or {}).get("labels") or {}
        missing = [name for name in _required if name not in labels]
        if not missing:
            return AdmissionResponse(True, None, None, None, [])
        message = "%s is missing required label%s: %s" % (
            _describe(req, obj),
            "" if len(missing) == 1 else "s",
            ", ".join(missing),
        )
        return AdmissionResponse(False, 403, message, None, [])
