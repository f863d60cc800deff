"""JSON schemas for the custom resources kubernetes-validate does not know.

Written from the CRD references (prometheus-operator ServiceMonitor
monitoring.coreos.com/v1; KEDA 2.12+ ScaledObject and TriggerAuthentication
keda.sh/v1alpha1 and its redis-streams and redis-cluster-streams scalers). They
cover the fields these manifests use and reject unknown ones, so a typo fails the
test instead of being dropped by the API server.
"""

from __future__ import annotations

from typing import Any

_STRING = {"type": "string", "minLength": 1}
_INT_STRING = {"type": "string", "pattern": "^[0-9]+$"}
_BOOL_STRING = {"type": "string", "enum": ["true", "false"]}
_DURATION = {"type": "string", "pattern": "^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": _STRING,
        "namespace": _STRING,
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}
_LABEL_SELECTOR = {
    "type": "object",
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array"},
    },
    "additionalProperties": False,
}


def _resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
        "additionalProperties": False,
    }


SERVICE_MONITOR = _resource(
    "monitoring.coreos.com/v1",
    "ServiceMonitor",
    {
        "type": "object",
        "required": ["selector", "endpoints"],
        "properties": {
            "selector": _LABEL_SELECTOR,
            "namespaceSelector": {
                "type": "object",
                "properties": {
                    "any": {"type": "boolean"},
                    "matchNames": {"type": "array", "items": _STRING},
                },
                "additionalProperties": False,
            },
            "jobLabel": _STRING,
            "endpoints": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["port"],
                    "properties": {
                        "port": _STRING,
                        "path": {"type": "string", "pattern": "^/"},
                        "scheme": {"enum": ["http", "https"]},
                        "interval": _DURATION,
                        "scrapeTimeout": _DURATION,
                        "honorLabels": {"type": "boolean"},
                    },
                    "additionalProperties": False,
                },
            },
        },
        "additionalProperties": False,
    },
)

# Trigger metadata of KEDA 2.12+'s redis-streams and redis-cluster-streams scalers: every value
# is a string (KEDA parses them). With lagCount the scaler reads the group's lag and needs
# activationLagCount; without it, the group's pending entries (pendingEntriesCount).
_SCALE_ON = {
    "oneOf": [
        {"required": ["lagCount", "activationLagCount"]},
        {"required": ["pendingEntriesCount"], "not": {"required": ["lagCount"]}},
    ]
}
_HOST_PORT = r"([^/:\[\]\s,]+|\[[0-9A-Fa-f:.]+\]):[0-9]+"
_STREAM_PROPERTIES = {
    "stream": _STRING,
    "consumerGroup": _STRING,
    "lagCount": _INT_STRING,
    "activationLagCount": _INT_STRING,
    "pendingEntriesCount": _INT_STRING,
    "databaseIndex": _INT_STRING,
    "enableTLS": _BOOL_STRING,
    "unsafeSsl": _BOOL_STRING,
}
_ENV_NAME = {"type": "string", "pattern": "^[A-Z_][A-Z0-9_]*$"}
_REDIS_STREAMS_METADATA = {
    "type": "object",
    "required": ["stream", "consumerGroup"],
    "allOf": [{"oneOf": [{"required": ["address"]}, {"required": ["addressFromEnv"]}]}, _SCALE_ON],
    "properties": {
        "address": {"type": "string", "pattern": f"^{_HOST_PORT}$"},
        "addressFromEnv": _ENV_NAME,
        **_STREAM_PROPERTIES,
    },
    "additionalProperties": False,
}
_REDIS_CLUSTER_STREAMS_METADATA = {
    "type": "object",
    "required": ["stream", "consumerGroup"],
    "allOf": [
        {"oneOf": [{"required": ["addresses"]}, {"required": ["addressesFromEnv"]}]},
        _SCALE_ON,
    ],
    "properties": {
        "addresses": {"type": "string", "pattern": f"^{_HOST_PORT}(, ?{_HOST_PORT})*$"},
        "addressesFromEnv": _ENV_NAME,
        **_STREAM_PROPERTIES,
    },
    "additionalProperties": False,
}
_METADATA_BY_TYPE = {
    "redis-streams": _REDIS_STREAMS_METADATA,
    "redis-cluster-streams": _REDIS_CLUSTER_STREAMS_METADATA,
}

SCALED_OBJECT = _resource(
    "keda.sh/v1alpha1",
    "ScaledObject",
    {
        "type": "object",
        "required": ["scaleTargetRef", "triggers"],
        "properties": {
            "scaleTargetRef": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "apiVersion": _STRING,
                    "kind": _STRING,
                    "name": _STRING,
                    "envSourceContainerName": _STRING,
                },
                "additionalProperties": False,
            },
            "pollingInterval": {"type": "integer", "minimum": 1},
            "cooldownPeriod": {"type": "integer", "minimum": 0},
            "idleReplicaCount": {"type": "integer", "minimum": 0},
            "minReplicaCount": {"type": "integer", "minimum": 0},
            "maxReplicaCount": {"type": "integer", "minimum": 1},
            "advanced": {
                "type": "object",
                "properties": {
                    "restoreToOriginalReplicaCount": {"type": "boolean"},
                    "horizontalPodAutoscalerConfig": {
                        "type": "object",
                        "properties": {"name": _STRING, "behavior": {"type": "object"}},
                        "additionalProperties": False,
                    },
                },
                "additionalProperties": False,
            },
            "triggers": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["type", "metadata"],
                    "allOf": [
                        {
                            "if": {"properties": {"type": {"const": kind}}},
                            "then": {"properties": {"metadata": metadata}},
                        }
                        for kind, metadata in _METADATA_BY_TYPE.items()
                    ],
                    "properties": {
                        "type": {"enum": list(_METADATA_BY_TYPE)},
                        "name": _STRING,
                        "metadata": {"type": "object"},
                        "authenticationRef": {
                            "type": "object",
                            "required": ["name"],
                            "properties": {
                                "name": _STRING,
                                "kind": {
                                    "enum": [
                                        "TriggerAuthentication",
                                        "ClusterTriggerAuthentication",
                                    ]
                                },
                            },
                            "additionalProperties": False,
                        },
                        "useCachedMetrics": {"type": "boolean"},
                    },
                    "additionalProperties": False,
                },
            },
        },
        "additionalProperties": False,
    },
)

TRIGGER_AUTHENTICATION = _resource(
    "keda.sh/v1alpha1",
    "TriggerAuthentication",
    {
        "type": "object",
        "required": ["secretTargetRef"],
        "properties": {
            "secretTargetRef": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["parameter", "name", "key"],
                    "properties": {
                        # redis-streams scaler authentication parameters
                        "parameter": {"enum": ["username", "password", "tls", "ca", "cert", "key"]},
                        "name": _STRING,
                        "key": _STRING,
                    },
                    "additionalProperties": False,
                },
            },
        },
        "additionalProperties": False,
    },
)

SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): TRIGGER_AUTHENTICATION,
}
