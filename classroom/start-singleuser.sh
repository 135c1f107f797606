#!/bin/sh
# What JupyterHub starts for a student (classroom/jupyterhub_config.py), as that student: on the
# first start a copy of the notebooks in ~/mpn_tutorial/notebooks (later starts keep the student's
# edits), their own run store in ~/mpn_tutorial/runs, then the single-user JupyterLab server.
set -eu
work="$HOME/mpn_tutorial"
if [ ! -d "$work/notebooks" ]; then
    mkdir -p "$work"
    rm -rf "$work/notebooks.partial"
    mkdir "$work/notebooks.partial"
    cp "$MPN_TUTORIAL_NOTEBOOKS"/*.ipynb "$work/notebooks.partial/"
    mv "$work/notebooks.partial" "$work/notebooks"  # a whole copy or none, even if the start is cut short
fi
export MPN_TUTORIAL_RUNS="${MPN_TUTORIAL_RUNS:-$work/runs}"
mkdir -p "$MPN_TUTORIAL_RUNS"
exec jupyterhub-singleuser "$@"
