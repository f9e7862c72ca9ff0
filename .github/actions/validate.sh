#!/usr/bin/env bash
# The run logic of the vhctl GitHub Action (action.yml at the repository root), kept in a file so
# that it can be run and tested outside GitHub.
#
#   validate.sh install   install a CPU torch, then vhctl
#   validate.sh run       vhctl validate --format github on the checkpoints
#   validate.sh requirement   print the pip requirement VHCTL_VERSION stands for
#
# Inputs arrive as environment variables (never pasted into shell code):
#   VHCTL_PATHS     checkpoint folders separated by spaces or newlines; globs (runs/*/ckpt,
#                   runs/**/ckpt) are expanded, a glob that matches nothing is passed as written
#                   so that vhctl reports it
#   VHCTL_DEEP      "true": also read every tensor and check that all values are finite
#   VHCTL_VERSION   "latest" (default), a release such as "0.1.0", or any pip requirement: a git
#                   URL (git+https://github.com/ORG/vhctl@REF) or a local path (".")
#   VHCTL_ACTION_SKIP_INSTALL=1   skip "install" and use the vhctl already on PATH
set -euo pipefail

vhctl_requirement() {
  local version="$1"
  if [[ -z "$version" || "$version" == latest ]]; then
    echo vhctl
  elif [[ "$version" =~ ^[0-9]+(\.[0-9A-Za-z]+)*$ ]]; then
    echo "vhctl==$version"
  else
    echo "$version"
  fi
}

install_vhctl() {
  if [[ "${VHCTL_ACTION_SKIP_INSTALL:-}" == 1 ]]; then
    echo "vhctl action: install skipped (VHCTL_ACTION_SKIP_INSTALL=1)"
    return
  fi
  python -m pip install --disable-pip-version-check torch --index-url https://download.pytorch.org/whl/cpu
  python -m pip install --disable-pip-version-check "$(vhctl_requirement "${VHCTL_VERSION:-latest}")"
}

run_validate() {
  local -a words=() paths=() matches=()
  local word
  read -r -d '' -a words <<<"${VHCTL_PATHS:-}" || true
  shopt -s globstar 2>/dev/null || true # bash 3.2 (macOS /bin/bash) has no '**'
  for word in ${words[@]+"${words[@]}"}; do
    # Unquoted on purpose: expand the glob (the word holds no whitespace after the split above).
    # shellcheck disable=SC2206
    matches=($word)
    paths+=(${matches[@]+"${matches[@]}"})
  done
  if ((${#paths[@]} == 0)); then
    echo "::error title=vhctl validate::no checkpoint given: set the action's 'path' input"
    exit 2
  fi
  local -a args=(validate --format github)
  if [[ "$(printf '%s' "${VHCTL_DEEP:-false}" | tr '[:upper:]' '[:lower:]')" == true ]]; then
    args+=(--deep)
  fi
  exec vhctl "${args[@]}" -- "${paths[@]}"
}

case "${1:-}" in
  install) install_vhctl ;;
  run) run_validate ;;
  requirement) vhctl_requirement "${VHCTL_VERSION:-latest}" ;;
  *)
    echo "usage: $0 install|run|requirement" >&2
    exit 2
    ;;
esac
