"""mft-eval CLI (placeholder while the tool is built)."""

from mft_core.ui import make_app

app = make_app("mft-eval")


@app.command()
def version():
    """Print the version."""
    from . import __version__

    print(__version__)


def main() -> None:
    app()
