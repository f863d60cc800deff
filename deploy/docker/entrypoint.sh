#!/bin/sh
# Container entrypoint: runs the command given as CMD in place of this shell
# (exec, so signals reach the daemon directly). A first word that is not a
# command on PATH is taken as an aam-dcl subcommand: `docker run IMAGE status`
# runs `aam-dcl status`.
set -eu

if [ "$#" -eq 0 ]; then
    set -- aam-bridge
fi

if command -v -- "$1" >/dev/null 2>&1; then
    exec "$@"
fi
exec aam-dcl "$@"
