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
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

def _register_commands() -> None:
    from .commands import core

    core.register(app)
    # Other command groups register themselves here (each module keeps its imports lazy).
    for module_name in ("mmzoo.preprocess.cli", "mmzoo.train.cli", "mmzoo.hub_cli"):
        try:
            module = __import__(module_name, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.register(app)


_register_commands()


def main(argv: Optional[list[str]] = None) -> None:
    from .errors import MmzooError, pydantic_line

    args = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args:
        os.environ["MMZOO_DEBUG"] = "1"
    try:
        code = app(args=args, prog_name="mmzoo", standalone_mode=False)
        if isinstance(code, int) and code:  # typer.Exit(code) is returned, not raised, outside standalone mode
            sys.exit(code)
    except MmzooError as exc:
        _fail(exc.one_line(), exc)
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
        sys.stderr.write("mmzoo: interrupted\n")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - click usage errors and pydantic validation errors land here too
        import click

        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(2)
        if type(exc).__name__ == "ValidationError" and type(exc).__module__.startswith("pydantic"):
            _fail(pydantic_line(exc), exc)
        raise


def _fail(line: str, exc: BaseException) -> None:
    if os.environ.get("MMZOO_DEBUG"):
        import traceback

        traceback.print_exception(type(exc), exc, exc.__traceback__)
    sys.stderr.write(f"mmzoo: error: {line}\n")
    sys.exit(2)


if __name__ == "__main__":
    main()
