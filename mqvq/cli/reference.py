"""`docs/cli.md`, the CLI reference, generated from the Typer app: every command, argument and option
with its default and help (`python -m mqvq.cli.reference > docs/cli.md`; a test fails when the file is
stale)."""

from __future__ import annotations

import typing

import typer

# Typer carries its own copy of click (typer._click): parameters and commands are recognised by what
# they have, not by click's classes


def _is_argument(p) -> bool:
    return p.param_type_name == "argument"


def _kind(p) -> str:
    """The value's type as a word: INT, FLOAT, PATH, TEXT (an Optional or list is read through)."""
    t = p.type_descriptor.annotation
    while typing.get_args(t):  # Optional[X], list[X]
        t = next(a for a in typing.get_args(t) if a is not type(None))
    return {int: "INT", float: "FLOAT", str: "TEXT", bool: ""}.get(t, getattr(t, "__name__", "VALUE").upper())


def _param(p) -> str:
    names = f"`{p.name.upper()}`" if _is_argument(p) else " / ".join(f"`{n}`" for n in [*p.opts, *p.secondary_opts])
    kind = "" if getattr(p, "is_flag", False) else f" {_kind(p)}"
    notes = []
    if p.required:
        notes.append("required")
    elif getattr(p, "is_flag", False):
        if p.default and p.secondary_opts:  # an on/off pair that is on unless turned off
            notes.append(f"default: `{p.opts[0]}`")
    elif p.default not in (None, (), [], "") and not callable(p.default):
        notes.append(f"default: `{p.default}`")
    if p.multiple and "repeatable" not in (p.help or ""):
        notes.append("repeatable")
    if p.min is not None and p.max is not None:
        notes.append(f"{p.min} to {p.max}")
    elif p.min is not None:
        notes.append(f"at least {p.min}")
    elif p.max is not None:
        notes.append(f"at most {p.max}")
    help_text = " ".join((p.help or "").split())
    extra = f" ({'; '.join(notes)})" if notes else ""
    return f"- {names}{kind}: {help_text}{extra}"


def _command(path: str, cmd, out: list[str]) -> None:
    if getattr(cmd, "hidden", False):
        return
    out.append(f"{'#' * (2 + path.count(' '))} `{path}`\n")
    doc = " ".join((cmd.help or "").split())
    if doc:
        out.append(doc + "\n")
    params = [p for p in cmd.params if p.name != "help" and not getattr(p, "hidden", False)]
    if hasattr(cmd, "commands"):
        subs = [name for name, c in cmd.commands.items() if not c.hidden]
        out.append("Commands: " + ", ".join(f"`{path} {s}`" for s in subs) + ".\n")
        for name in subs:
            _command(f"{path} {name}", cmd.commands[name], out)
        return
    usage = " ".join(
        [
            "mqvq",
            *path.split()[1:],
            *(p.name.upper() for p in params if _is_argument(p)),
            "[OPTIONS]" if any(not _is_argument(p) for p in params) else "",
        ]
    ).strip()
    out.append(f"```\n{usage}\n```\n")
    out.append("\n".join(_param(p) for p in params) + "\n" if params else "")


def reference() -> str:
    from mqvq.cli import app

    root = typer.main.get_command(app)
    out = [
        "# Command-line reference\n",
        "Generated from the CLI itself by `mqvq/cli/reference.py` (run as a module, its output is this file; a test "
        "fails when this file is stale). `mqvq COMMAND --help` says the same in a terminal.\n",
    ]
    _command("mqvq", root, out)
    return "\n".join(out)


if __name__ == "__main__":
    print(reference(), end="")
