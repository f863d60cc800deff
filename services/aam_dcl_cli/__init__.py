"""aam-dcl, the operator app: the CLI, its operations (status, pending, dlq, trim, pause,
acl), ``watch``, the demo and the embedded-server launcher. The only package allowed to import
both daemons (the layers are import-linter contracts in pyproject.toml)."""
