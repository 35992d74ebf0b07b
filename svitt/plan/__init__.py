"""The experiment plan: which runs exist, where they live, what each starts from and its config.

`specs` reads the study specs under `ablations/` (sparsity rows, datasets, one YAML per
table); `runs` turns a profile and those specs into runs, paths and resolved configs. The
workflow rules and the report code both import this package and never each other.
"""
