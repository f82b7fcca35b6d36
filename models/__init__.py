"""The shipped models, package data of `unetsep.models`: one folder per model (`default/`, later
`seed/`), each holding the exported formats and their metadata. Found with importlib.resources, so
an installed wheel works from any folder (runtime/backends.py: `shipped_model`)."""
