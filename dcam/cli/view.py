"""``dcam view DIR``: a static page to browse a run (``dcam run --out DIR``).

Writes DIR/index.html and DIR/view/ (page data and images): open the page in
any browser, no network needed. A list of records (thumbnail, response,
errors); per record the image with the response's words as buttons: hover or
click a word to see its heatmap over the image, with a colour bar and the
map's statistics. Keys: j/k or the down/up arrows for the next/previous
record, left/right for the previous/next word, PageDown/PageUp for pages.
"""
from __future__ import annotations

import sys

from ..errors import InputError
from . import common
from .explain import MAX_SIDE_LIMIT


def add_parser(sub) -> None:
    p = sub.add_parser("view", help="write DIR/index.html, a static page to browse a run", description=__doc__)
    p.add_argument("folder", metavar="DIR", help="run folder (dcam run --out)")
    p.add_argument("--per-page", type=common.positive_int, default=50, help="records per page")
    p.add_argument("--limit", type=common.positive_int, default=None, help="show only the first N records (default: every record)")
    # (the range of dcam explain --max-side: 1 and 100000 were taken)
    p.add_argument("--max-side", type=common.int_in(16, MAX_SIDE_LIMIT), default=512,
                   help="longest side of the images written for the page, in pixels")
    # (None: dcam.render.html.PAGE_TRAJECTORY_BYTES, named here, not imported: the help imports nothing heavy)
    p.add_argument("--trajectory-bytes", type=common.positive_int, default=None, metavar="N",
                   help="bytes of maps a record's trajectory may add to the page; past them it shows evenly "
                        "spaced steps, the first and last among them, and says so (the run keeps every step) "
                        "(default: 1048576, 1 MiB)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run, command="view")


def run(args) -> int:
    from ..runs.viewer import write_run_page

    if args.quiet:
        common.silence_progress()
    try:
        summary = write_run_page(args.folder, per_page=args.per_page, limit=args.limit, max_side=args.max_side,
                                 progress=not args.quiet, trajectory_bytes=args.trajectory_bytes)
    except InputError as exc:  # the run reader's errors are about the folder given as DIR
        raise common.argument_error(exc, {"run": "DIR"}) from None
    for note in summary.get("notes", ()):
        print(f"dcam view: note: {note}", file=sys.stderr)
    print(f"wrote {summary['page']}: {summary['records']} explained records on {summary['pages']} page(s)"
          + (f" and {summary['errors']} failed ones" if summary["errors"] else ""))
    return 0
