"""Terminal output shared by the CLIs: errors on stderr with the fix, progress bars on stderr."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .errors import MFTError

if TYPE_CHECKING:
    import typer

# soft_wrap: messages are never wrapped by rich, since a path or command broken over two lines cannot be copied or
# grepped (tables still fit the width)
console = Console(stderr=True, highlight=False, soft_wrap=True)

# Import-time chatter of optional dependencies (torchao's missing CUDA kernels, torch's pytree deprecation notes,
# DeepSpeed's accelerator probe) says nothing about the user's run; keep real warnings and errors visible.
for _name in ("torchao", "torch.utils._pytree", "DeepSpeed"):
    logging.getLogger(_name).setLevel(logging.ERROR)
F = TypeVar("F", bound=Callable)


def progress(transient: bool = False) -> Progress:
    """A rich progress bar on stderr (hidden automatically when stderr is not a terminal)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=transient,
        disable=not console.is_terminal,
    )


@contextlib.contextmanager
def labelled_bars(prefix: str = "", *, cumulative: bool = True) -> Iterator[Callable[[str, int, int | None], None]]:
    """Progress bars for one library call: a bar per label it reports (a file, task, split or stage).

    The callback is ``(label, n, total)``: ``n`` is the work done since the last call when ``cumulative``, else
    the work done so far.
    """
    with progress() as bar:
        handles: dict[str, TaskID] = {}

        def report(label: str, n: int, total: int | None) -> None:
            if label not in handles:
                handles[label] = bar.add_task(f"{prefix} {label}".strip(), total=total, info="")
            if cumulative:
                bar.advance(handles[label], n)
            else:
                bar.update(handles[label], completed=n)

        yield report


def info(message: str) -> None:
    console.print(message)


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/] {message}")


def cli_errors(fn: F) -> F:
    """Turn library errors into a one-paragraph message and the error's exit code (0/1/2/3, see errors.py)."""
    import typer

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MFTError as exc:
            console.print(f"[bold red]error:[/] {exc.message}")
            if exc.fix:
                console.print(f"[bold]fix:[/] {exc.fix}")
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: nothing half-written was kept")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def make_app(help_text: str) -> typer.Typer:
    import typer

    return typer.Typer(
        help=help_text,
        no_args_is_help=True,
        pretty_exceptions_show_locals=False,
        add_completion=False,
        rich_markup_mode="rich",
    )
