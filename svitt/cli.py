"""`svitt <command> ...`: the one entry point every Snakemake rule calls.

Each command lives in the module that implements it: `run(args) -> int`, and
`add_arguments(parser, command)` there or, for the stages, in the light `svitt.engine.options`.
Only the chosen command's modules are imported, after its arguments are parsed, so
`svitt --help` and `svitt <command> --help` are instant and a broken optional stage cannot
break the others.

How a command ends: a `UserError` (bad input) prints one line `svitt <command>: error: ...`
and exits with status 2; SIGINT / SIGTERM print one line saying what was kept and how to
resume, and exit with 130 / 143; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from dataclasses import dataclass

from svitt import __version__
from svitt.errors import Interrupted, UserError, one_line, raise_on_stop_signals
from svitt.startup import freeze_at_exit, permanent_imports


@dataclass(frozen=True)
class Command:
    module: str  # defines run(args) -> int
    text: str
    # defines add_arguments(parser, command); the stages' is light, so `--help` is fast
    options: str | None = None


STAGE_OPTIONS = "svitt.engine.options"
COMMANDS: dict[str, Command] = {
    "synthetic": Command(
        "svitt.data.synthetic", "generate the embedded synthetic temporal benchmark"
    ),
    "validate-data": Command("svitt.data.validate", "scan a dataset's videos and write a report"),
    "pretrain": Command("svitt.engine.pretrain", "pre-train with VTC + VTM + MLM", STAGE_OPTIONS),
    "eval-retrieval": Command(
        "svitt.engine.retrieval", "zero-shot text-to-video retrieval", STAGE_OPTIONS
    ),
    "finetune-retrieval": Command(
        "svitt.engine.retrieval", "fine-tune, then evaluate retrieval", STAGE_OPTIONS
    ),
    "finetune-qa": Command(
        "svitt.engine.qa", "fine-tune the answer decoder, then evaluate QA", STAGE_OPTIONS
    ),
    "eval-qa": Command(
        "svitt.engine.qa", "evaluate video QA by ranking the answer list", STAGE_OPTIONS
    ),
    "import-checkpoint": Command(
        "svitt.engine.import_checkpoint",
        "convert a release or Singularity checkpoint into an svitt checkpoint",
    ),
    "table": Command(
        "svitt.report.tables", "write one of the supplement's tables from metrics files"
    ),
    "figure": Command("svitt.report.figures", "draw one of the supplement's figures"),
    "claims": Command(
        "svitt.report.claims", "check the supplement's claims on the runs' per-query outcomes"
    ),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {cmd.text}" for name, cmd in COMMANDS.items()]
    return (
        "usage: svitt <command> [options]\n\ncommands:\n"
        + "\n".join(lines)
        + "\n\n`svitt <command> --help` lists the options of a command; "
        "`svitt --version` prints the version."
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        print(f"svitt {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"svitt: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    spec = COMMANDS[command]
    parser = argparse.ArgumentParser(prog=f"svitt {command}", description=spec.text)
    importlib.import_module(spec.options or spec.module).add_arguments(parser, command)
    args = parser.parse_args(rest)
    args.command = command
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    freeze_at_exit()
    try:
        with raise_on_stop_signals():  # from here on, also while torch is being imported
            with permanent_imports():
                module = importlib.import_module(spec.module)
            return int(module.run(args) or 0)
    except UserError as err:
        print(f"svitt {command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        print(f"svitt {command}: {stop}", file=sys.stderr)
        return stop.exit_code


if __name__ == "__main__":
    sys.exit(main())
