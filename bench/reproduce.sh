#!/usr/bin/env bash
# Reproduce the papers' ablation tables on the embedded data, then write REPRODUCTION.md.
#
#   bench/reproduce.sh [STUDY ...]     (from the repository root; `make reproduction`)
#
# Runs each paper study of studies/ with --embedded (its whole design, 3 seeds, budgets
# scaled by ltsearch.spec.profiles) into runs/<name>-embedded, decoupled studies first (they
# share two stage-1 models and their feature caches), then the end-to-end ones. Running it
# again resumes: finished (configuration, seed) rows are read back, never re-run, and a run
# that an earlier study here already finished (the tables' shared rows) is copied, not
# trained (search.reuse; 24 runs, 12 of them end-to-end). Then
# `ltsearch reproduction` writes REPRODUCTION.md from every runs/*-embedded directory that
# exists, with the verdict rule in ltsearch/report/reproduction.py. Exits 1 when a study had
# failed rows (the reproduction is still written, and says which).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export RAY_USAGE_STATS_ENABLED=${RAY_USAGE_STATS_ENABLED:-0}
DEFAULT=(acsl_table2 loce_table1 loce_table2 loce_table3 loce_table4 ahrl_table3 ahrl_table5
         c2am_table5 c2am_table4 c2am_table3 rog_table1_rfs rog_table4 rog_table1)
if [ $# -gt 0 ]; then STUDIES=("$@"); else STUDIES=("${DEFAULT[@]}"); fi
status=0
for s in "${STUDIES[@]}"; do
    start=$(date +%s)
    "$PY" -m ltsearch run "studies/$s.yaml" --embedded --quiet || status=1
    echo "reproduce: $s took $(( $(date +%s) - start )) s"
done
dirs=()
for d in runs/*-embedded; do
    case "$d" in runs/quickstart-embedded|runs/pareto-cross-loss-embedded) ;; *) [ -d "$d" ] && dirs+=("$d");; esac
done
"$PY" -m ltsearch reproduction "${dirs[@]}" --out REPRODUCTION.md || status=1
exit $status
