"""``dcam families``: the model families dcam explains: how each is detected,
its hooked blocks and default block, its probes, how its image lies in the
token sequence, its mask id and sampler (the table of docs/FAMILIES.md).
``--load`` adds how a real checkpoint of each family is loaded; ``--markdown``
prints the table as Markdown. Adapters registered under a name
(``register_adapter(..., name=...)``) in this Python process follow the table,
marked as registered (a ``dcam`` command takes one with ``--adapter MODULE:CLASS``)."""
from __future__ import annotations

import shutil
import textwrap

COLUMNS = ("family", "detection", "default_layer", "probes", "image_grid", "mask_id")


def add_parser(sub) -> None:
    p = sub.add_parser("families", help="list the supported model families", description=__doc__)
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown (docs/FAMILIES.md)")
    p.add_argument("--load", action="store_true", help="also how a real checkpoint of each family is loaded")
    p.set_defaults(run=run, command="families")


def _text_table(rows, columns) -> str:
    width = max(60, shutil.get_terminal_size((120, 20)).columns)
    lines = []
    for r in rows:
        head = f"{r['family']}: {r['models']}"
        lines.append(head)
        for c in columns[1:]:
            lines.extend(textwrap.wrap(r[c], width=width, initial_indent=f"    {c.replace('_', ' ')}: ",
                                       subsequent_indent="        "))
    return "\n".join(lines)


def run(args) -> int:
    from ..errors import InputError
    from ..probe.adapters import REGISTERED
    from ..probe.adapters.families import FAMILIES, adapter_option_for, family_rows, markdown_table, registered_row

    if args.markdown:
        if args.load:  # it was ignored: the Markdown table is docs/FAMILIES.md's, without that column
            raise InputError("--load: the --markdown table has no loading column; use one or the other")
        # a user's adapters follow, as in the plain listing (they were left out of the Markdown table)
        print(markdown_table(family_rows() + [registered_row(name, cls) for name, cls in REGISTERED.items()]))
        return 0
    rows = family_rows()
    cols = COLUMNS + ("blocks", "sampler", "trajectory")  # (the trajectory column was --markdown's only)
    if args.load:
        for r, f in zip(rows, FAMILIES):
            r["loading"] = f.load
        cols = cols + ("loading",)
    print(_text_table(rows, cols))
    for name, cls in REGISTERED.items():  # a user's adapters, registered with register_adapter(..., name=...)
        print(f"{name}: registered adapter {cls.__module__}.{cls.__qualname__} (register_adapter; family={name!r} "
              f"forces it; {adapter_option_for(cls)})")
    return 0
