"""The `s2m` Typer application: subcommand groups and the one place errors become messages."""

from __future__ import annotations

import sys

import typer

from cli import data as data_cmd
from cli import evaluate as eval_cmd
from cli import db as db_cmd
from cli import index as index_cmd
from cli import models as models_cmd
from cli import retrieve as retrieve_cmd
from cli import serve as serve_cmd
from cli import commands
from cli import train as train_cmd

app = typer.Typer(
    name="s2m",
    help="Sketch-based medical image retrieval (Sketch2MedI): sketch -> W+ -> archive images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_cmd.app, name="data")
app.add_typer(train_cmd.app, name="train")
app.add_typer(index_cmd.app, name="index")
app.add_typer(db_cmd.app, name="db")
app.add_typer(eval_cmd.app, name="eval")
app.add_typer(models_cmd.app, name="models")
commands.register(app)
app.command("retrieve")(retrieve_cmd.retrieve)
app.command("serve")(serve_cmd.serve)

# The `retrieve` console script: the same command as `s2m retrieve`, as an app of its own.
retrieve_app = typer.Typer(name="retrieve", add_completion=False, pretty_exceptions_enable=False)
retrieve_app.command()(retrieve_cmd.retrieve)


def _run(command: typer.Typer, args: list[str] | None = None, prog: str = "s2m") -> None:
    """Run a Typer app, turning domain errors into one line on stderr and a non-zero exit."""
    from s2m_retrieval.errors import S2MError

    try:
        rc = command(args=args, prog_name=prog, standalone_mode=False)
    except S2MError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted; everything written so far is kept and a rerun resumes", err=True)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    except OSError as exc:  # a path the user gave cannot be read or written
        where = f": {exc.filename}" if exc.filename else ""
        typer.echo(f"error: {exc.strerror or exc}{where}", err=True)
        sys.exit(1)
    except Exception as exc:
        # Usage errors (missing option, bad value) come from the click that typer runs on; they
        # know how to show themselves and carry their exit code (2).
        if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
            if type(exc).__name__ == "NoArgsIsHelpError" or not hasattr(exc, "format_message"):
                exc.show()  # a bare group: its help is the answer
            else:
                ctx = getattr(exc, "ctx", None)
                hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
                typer.echo(f"error: {exc.format_message()}{hint}", err=True)
            sys.exit(exc.exit_code)
        raise
    # In non-standalone mode click returns the code of a `typer.Exit` instead of raising it.
    sys.exit(rc if isinstance(rc, int) else 0)


def main() -> None:
    """Entry point of the `s2m` console script."""
    _run(app)


def retrieve_main() -> None:
    """Entry point of the `retrieve` console script (same as `s2m retrieve`)."""
    _run(retrieve_app, prog="retrieve")
