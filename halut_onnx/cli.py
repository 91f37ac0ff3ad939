"""The halut-onnx command line. Each command is a thin shell over the public API; errors a user can cause are
reported as one line and a non-zero exit, never a traceback."""

from __future__ import annotations

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="halut-onnx")
def main() -> None:
    """Replace the MatMul, Gemm and Conv layers of an ONNX model by learned table lookups (MADDNESS / Halut)."""


@main.command("library-path")
def library_path() -> None:
    """Print the path of the custom-op library to register with onnxruntime."""
    from .library import get_library_path

    try:
        click.echo(get_library_path())
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    main()
