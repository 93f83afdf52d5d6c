"""The ``mmzoo`` command line: a thin Typer layer over the Python API.

Nothing heavy is imported at module level, so ``mmzoo --help`` stays fast; each command imports what
it needs. Library errors (``MmzooError``) become one line on stderr and exit code 2; ``--debug`` (or
``MMZOO_DEBUG=1``) shows the traceback instead.
"""
from __future__ import annotations

import os
import sys
from typing import Optional

import typer

app = typer.Typer(
    name="mmzoo",
    help="Convert, upcycle, preprocess, train and share LLaVA-style vision-language models.",
    epilog="Start with `mmzoo demo -o mmzoo-demo` (tiny models, offline, under a minute), then e.g. "
           "`mmzoo inspect mmzoo-demo/llava-internal`. Every command's --help has examples; add --debug to any command for "
           "the full traceback of an error.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Every subsystem keeps its commands in its own ``cli.py`` (imports lazy, so ``mmzoo --help`` stays fast);
# this is the registry, in the order ``mmzoo --help`` lists them. A subsystem that is not installed is skipped.
SUBCOMMANDS = (
    "mmzoo.converters.cli",   # convert, init, formats
    "mmzoo.inspection.cli",   # inspect, diff
    "mmzoo.demo.cli",         # demo
    "mmzoo.preprocess.cli",   # preprocess
    "mmzoo.train.cli",        # train, export
    "mmzoo.generate.cli",     # generate
    "mmzoo.plot.cli",         # plot
    "mmzoo.analysis.cli",     # analyze-routing
    "mmzoo.hub.cli",          # hub push / pull
)


def _register_commands() -> None:
    for module_name in SUBCOMMANDS:
        try:
            module = __import__(module_name, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.register(app)


_register_commands()


def main(argv: Optional[list[str]] = None) -> None:
    from .errors import MmzooError, missing_package, pydantic_line
    from .io.claim import Terminated
    from .quiet import quiet_libraries

    args = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args:
        os.environ["MMZOO_DEBUG"] = "1"
    # hub downloads keep their tqdm bars on a terminal; in a log they would be lines of carriage returns
    quiet_libraries(progress_bars=bool(args) and args[0] == "hub" and sys.stderr.isatty())
    try:
        command = typer.main.get_command(app)
        tidy_help(command)
        code = command.main(args=args, prog_name="mmzoo", standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C (KeyboardInterrupt) into a returned 130
            _interrupted(args, "interrupted", 130)
        if isinstance(code, int) and code:  # typer.Exit(code) is returned, not raised, outside standalone mode
            sys.exit(code)
    except MmzooError as exc:
        _fail(exc.one_line(), exc)
    except ModuleNotFoundError as exc:  # an optional extra not installed (deepspeed for train/export, …)
        missing = missing_package(exc.name or "", f"mmzoo {_command_name(args)}".strip())
        if missing is None:
            raise
        _fail(missing.one_line(), exc)
    except OSError as exc:  # disk full, permissions, a file where a folder should be: the user's to fix
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        _fail(f"{where}{exc.strerror or exc}", exc)
    except RecursionError as exc:  # a structure nested too deeply for a reader that has no bound of its own
        _fail("input nested too deeply to process (a hostile or corrupt file?)", exc)
    except UnicodeDecodeError as exc:
        _fail(f"input is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})", exc)
    except MemoryError as exc:
        _fail("out of memory (an input far larger than expected?)", exc)
    except KeyboardInterrupt:
        _interrupted(args, "interrupted", 130)
    except Terminated:  # SIGTERM while an output was being written (mmzoo.io.claim)
        _interrupted(args, "terminated", 143)
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - click usage errors and pydantic validation errors land here too
        from .console import click_exceptions

        click = click_exceptions()
        if isinstance(exc, typer.Exit):
            sys.exit(exc.exit_code)
        if isinstance(exc, getattr(click, "NoArgsIsHelpError", ())):  # `mmzoo hub` alone: the help is the answer
            exc.show()
            sys.exit(2)
        if isinstance(exc, click.UsageError):
            ctx = exc.ctx
            where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            _fail(f"{exc.format_message()}{where}", exc)
        if isinstance(exc, click.ClickException):
            _fail(exc.format_message(), exc)
        if type(exc).__name__ == "ValidationError" and type(exc).__module__.startswith("pydantic"):
            _fail(pydantic_line(exc), exc)
        raise


# Commands that keep their finished work on purpose, so that --resume continues after an interruption.
_KEEPS_PROGRESS = {"preprocess": "finished shards are kept, --resume continues",
                   "train": "finished checkpoints are kept, --resume auto continues",
                   "demo": "the demo folder holds the steps finished so far"}


def _command_name(args: list[str]) -> str:
    return next((a for a in args if not a.startswith("-")), "")


def _interrupted(args: list[str], what: str, code: int) -> None:
    command = _command_name(args)
    sys.stderr.write(f"mmzoo: {what}, {_KEEPS_PROGRESS.get(command, 'nothing written')}\n")
    sys.exit(code)


def tidy_help(command) -> None:
    """Help text as users of Unix tools read it: ``SRC`` rather than ``{src}`` in the usage line, and no
    ``<bool>`` type beside on/off flags (typer's defaults). Applied to every command, whoever registered it."""
    for param in getattr(command, "params", ()):
        if getattr(param, "param_type_name", "") == "argument":
            display = param.name.upper() if param.required else f"[{param.name.upper()}]"
            param.metavar = param.name.upper()
            param._usage_display_name = lambda display=display: display  # typer ≥ 0.23 wraps required ones in {}
        elif getattr(param, "is_flag", False) and not getattr(param, "count", False):
            param.metavar = ""
    if hasattr(command, "get_help_option"):  # -h/--help is made on demand, with the context's option names
        make_help_option = command.get_help_option

        def get_help_option(ctx, make_help_option=make_help_option):
            option = make_help_option(ctx)
            if option is not None:
                option.metavar = ""
            return option

        command.get_help_option = get_help_option
    for sub in getattr(command, "commands", {}).values():
        tidy_help(sub)


def _fail(line: str, exc: BaseException) -> None:
    if os.environ.get("MMZOO_DEBUG"):
        import traceback

        traceback.print_exception(type(exc), exc, exc.__traceback__)
    sys.stderr.write(f"mmzoo: error: {line}\n")
    sys.exit(2)


if __name__ == "__main__":
    main()
