"""The CLI layer: one module per `pointlift` verb, each with `run(args) -> exit code`.

`pointlift.cli` parses the command line and dispatches here; these modules turn parsed arguments into
calls of library functions and print the outcome. Nothing in the library imports them. `common`
holds what every training command shares (config loading, the resume check, the run directory).
"""
