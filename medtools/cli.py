"""The medtools command-line app. Imports nothing heavy: each command imports what it needs."""

from __future__ import annotations

import importlib
import importlib.util

import typer

import medtools

app = typer.Typer(
    name="medtools",
    help="Small composable tools for privacy-preserving medical imaging. Paths on stdout, logs on stderr.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Families register their commands here; a family that is not installed is simply absent.
FAMILIES = (
    "medtools.utility.commands",
    "medtools.brain.commands",
    "medtools.synth.commands",
    "medtools.secure.commands",
    "medtools.cls.commands",
    "medtools.index.commands",
    "medtools.collab.commands",
    "medtools.serve.commands",
)


def _version(value: bool) -> None:
    if value:
        print(f"medtools {medtools.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """medtools: segment, attack, protect, synthesise, encrypt and audit medical images."""


def _register() -> None:
    from medtools.phantom.commands import app as phantom_app

    app.add_typer(phantom_app, name="phantom")
    for module_name in FAMILIES:
        try:
            if importlib.util.find_spec(module_name) is None:
                continue
        except ModuleNotFoundError:
            continue
        importlib.import_module(module_name).register(app)


_register()

if __name__ == "__main__":  # pragma: no cover
    app()
