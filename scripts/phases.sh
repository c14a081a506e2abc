# Sourced by .ci/run and scripts/test.sh: `phase NAME CMD...` runs CMD and records how long it
# took; when the script exits, a table of every phase (and whether it passed) goes to stderr, so a
# slow phase is visible in every log.
_phase_rows=()
phase() {
  local name=$1 start end rc=0
  shift
  echo "==> $name: $*" >&2
  start=${EPOCHREALTIME/./}
  "$@" || rc=$?
  end=${EPOCHREALTIME/./}
  local tenths=$(((end - start) / 100000))
  _phase_rows+=("$(printf '%-8s %6d.%d s  %s' "$name" $((tenths / 10)) $((tenths % 10)) "$([ $rc -eq 0 ] && echo ok || echo "FAILED ($rc)")")")
  return $rc
}
_phase_report() {
  [ ${#_phase_rows[@]} -gt 0 ] || return 0
  {
    echo "==> phase times ($_phase_script)"
    printf '    %s\n' "${_phase_rows[@]}"
  } >&2
}
_phase_script=${0##*/}
trap _phase_report EXIT
