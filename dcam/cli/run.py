"""``dcam run MANIFEST --out DIR``: explain every record of a manifest into one folder.

MANIFEST: a JSONL file (one record per line: id, image, optional prompt,
response, targets, mask, labels, meta; docs/RUNS.md), a folder of images, or
a COCO/TAM data folder (the `dcam eval` layouts). Writes safetensors shards,
index.jsonl, errors.jsonl, run.json (and metrics.json/.md with masks) into
--out. Rerunning the same command resumes: records already in the index are
skipped. On many processes: torchrun --nproc_per_node=N -m dcam run ...
(gloo on CPU; --device cuda gives each rank the GPU of its LOCAL_RANK).
--profile FILE: a torch.profiler trace of a few batches of each rank's share
(--profile-batches), one file per rank.
"""
from __future__ import annotations

import os
import re
import signal
import sys
import threading

from ..errors import InputError, one_line
from . import common
from .profile import TRACE_SIZE_HELP


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="explain every record of a manifest (resumable, many processes with torchrun)",
                       description=__doc__)
    p.add_argument("manifest", metavar="MANIFEST", help="JSONL manifest, a folder of images, or a COCO/TAM folder")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder (a rerun into it resumes)")
    p.add_argument("--overwrite", action="store_true",
                   help="empty --out first (also when it holds a run of another model or config); also replaces "
                        "an existing --profile FILE")
    p.add_argument("--prompt", default=None, help="prompt for records without one (default: the model's)")
    p.add_argument("--target-score", default=None, choices=common.TARGET_SCORE_NAMES,
                   help="score whose gradient is pooled (default: the method's)")
    p.add_argument("--batch-size", type=common.positive_int, default=8, help="records per explain_batch call")
    common.add_batch_slack_option(p)
    p.add_argument("--shard-size", type=common.positive_int, default=256,
                   help="records per safetensors shard (a shard is also written after 120 s)")
    p.add_argument("--overlays", action="store_true",
                   help="also write DIR/overlays/<record>-<hash>/NN_word.png (a resume keeps the setting it "
                        "started with)")
    p.add_argument("--trajectory", action="store_true",
                   help="also store every word's map on every denoising step of the model's own generation "
                        "(records without a response; dcam view shows a step slider)")
    p.add_argument("--response-length", type=common.positive_int, default=None, metavar="N",
                   help="tokens the model generates for records without a response (a diffusion model's canvas, "
                        "a causal model's longest answer; default: the model's own; part of the run's fingerprint)")
    p.add_argument("--split", default=None,
                   help="split of a COCO data folder (picks instances_<split>*, which must be there; default: its test "
                        "split if it has one, else its val split; one that begins several files' names is refused)")
    p.add_argument("--profile", default=None, metavar="FILE",
                   help="write a torch.profiler trace of --profile-batches batches of this process's share to FILE "
                        "(Chrome trace JSON: open it in ui.perfetto.dev; each stage of dcam.profiling.STAGES is a "
                        "named range: dcam.generate, dcam.forward, dcam.backward, dcam.maps, ...) once the run is "
                        "written, and print each stage's own seconds in them on stderr, unless --quiet; a run that fails or is interrupted "
                        "leaves none. Under torchrun each rank writes its own: FILE for rank 0, FILE with .rankN "
                        "before its extension for rank N (trace.json, trace.rank1.json; trace.json.gz, trace.rank1.json.gz). An "
                        "existing FILE is "
                        "replaced only with --overwrite, as in dcam explain (one option replaces what exists, in "
                        "every command, and a rerun does not lose the last session's profile unasked); here "
                        "--overwrite also starts the run over, so name a new FILE to profile a resumed run; "
                        f"{TRACE_SIZE_HELP} (default: no profile)")
    p.add_argument("--profile-batches", type=common.positive_int, default=None, metavar="K",
                   help="batches of each rank's share that --profile records, from its second: the first is a "
                        "warm-up, whose first-call costs (kernel compilation, the allocator's growth) would "
                        "dominate a profile of it; a rank with a single batch records that one, a resumed run the "
                        "batches it runs (default: 2)")
    common.add_model_options(p)
    common.add_family_option(p)
    common.add_method_options(p)
    common.add_run_options(p)
    p.set_defaults(run=run, command="run")


#: run_dataset's options as dcam run's (:func:`common.argument_error`)
RUN_OPTIONS = {"probe": "--probe", "target_score": "--target-score", "steps": "--steps", "prompt": "--prompt",
               "response_length": "--response-length", "memory_budget": "--memory-budget", "out": "--out",
               "view": "--view"}  # (a trajectory of view="all": check_run_options)


def _explainer(args, dist):
    """The model on this rank's device and its Explainer."""
    args.device = dist.device
    model, processor = common.load_model_for(args)
    return common.explainer_for(model, processor, args)


def _trace_path(args, rank: int):
    """This rank's --profile file (:func:`.profile.rank_path`), refused as dcam explain refuses one: in
    --out (a run folder, emptied by --overwrite), existing without --overwrite, not a regular file.
    Each rank checks its own (under torchrun on several machines, on the one that writes it)."""
    from .profile import check_trace_path, rank_path

    if args.profile is None:
        return None
    path = rank_path(args.profile, rank)
    target = check_trace_path(path, args.out, "the run folder", [("the manifest", args.manifest),
                                                                 ("the model", common.model_location(args))], True)
    if os.path.lexists(target) and not args.overwrite:  # (said here: --overwrite also empties --out)
        raise InputError(f"--profile: {path!r} exists; choose a new file or pass --overwrite (which replaces it, "
                         "and starts the run in --out over)")
    return target


def _run(args) -> int:
    from ..provenance import command
    from ..runs import RunOptions, run_dataset
    from ..runs.distributed import setup
    from ..runs.folder import FolderLock, check_folder, model_identity
    from ..runs.runner import check_run_prompt
    from .profile import BatchWindow, TraceWriter

    root = check_folder(args.out)  # (the folder run_dataset writes: '..' taken as text, not through a link)
    check_run_prompt(args.prompt, "--prompt")
    if args.profile_batches is not None and args.profile is None:  # (taken and ignored)
        raise InputError("--profile-batches: says how many batches --profile records; give --profile FILE too, "
                         "or leave --profile-batches out")
    common.apply_run_options(args)
    dist = setup(args.device)
    lock = None
    stop = SigtermAsInterrupt()  # (SIGTERM: torchrun stopping the other ranks when one fails, a scheduler's cancel)
    try:
        quiet = args.quiet or dist.rank != 0
        trace = dist.agree(lambda: _trace_path(args, dist.rank))  # before anything is read or written
        source = dist.agree(lambda: _open_source(args))
        if args.split is not None and source.kind != "coco":  # (taken and ignored)
            raise InputError(f"--split: a {source.kind} source has no splits (only a COCO data folder has them); "
                             "leave --split out")
        # the folder's lock, taken now: a folder another run writes into is refused before the model loads
        # (minutes for a large one), and of two runs started together the second is (a probe of the lock, the
        # lock itself taken after the model loaded, let both load theirs); the other ranks wait for rank 0's word
        # the lock of the folder the run writes (--out as typed, 'link/../out', was another folder for the kernel);
        # until the run starts writing, SIGTERM leaves it as found, as Ctrl-C does
        stop.install()
        lock = dist.on_rank0(lambda: FolderLock.take(root))
        common.log(f"{len(source)} records in {args.manifest}; loading the model", quiet)
        exp = dist.agree(lambda: _explainer(args, dist))
        # the fingerprint is checked and written by rank 0 only
        model = dist.agree(lambda: model_identity(args.model) if dist.rank == 0 else None)
        opts = RunOptions(batch_size=args.batch_size, shard_size=args.shard_size, probe=args.probe,
                          target_score=args.target_score, steps=args.steps, prompt=args.prompt,
                          response_length=args.response_length,
                          overlays=args.overlays, overwrite=args.overwrite, memory_budget=args.memory_budget,
                          trajectory=args.trajectory, protect=(("the model", common.model_location(args)),),
                          progress=not args.quiet, extra={"chunk_size": args.chunk_size},
                          command=command(getattr(args, "command_line", None)))
        # the batches' trace is exported once the run's own output is written, then renamed into place: a
        # failure or Ctrl-C before that leaves neither the trace nor a temporary file
        with TraceWriter(trace, args.quiet, deferred=True) as profile:
            window = BatchWindow(profile, args.profile_batches or 2)
            stop.restore()  # (a run killed while it writes is resumed, as before)
            args.writing = True  # (from here on the folder may be written: a Ctrl-C keeps what was)
            try:
                info = run_dataset(exp, source, args.out, opts, dist, model=model,
                                   log=lambda msg: common.log(msg, quiet), on_batch=window, lock=lock)
            except InputError as exc:  # the options run_dataset refuses, named as dcam run's
                raise _as_options(exc) from None
            if trace is not None:
                dist.barrier()  # rank 0 has written run.json: the run is complete on every rank
                if profile.started:
                    profile.commit(args.out, window.scope)
                else:  # a resume with nothing left to do (or a rank whose share was done)
                    common.log(f"profile: this process had no batch left to explain; no trace written to {trace}",
                               args.quiet)
    finally:
        stop.hold()  # (a SIGTERM now is raised once the folder is left as found)
        if lock is not None:  # (a refusal, failure or Ctrl-C before the run prepared the folder: left as found)
            lock.release(leave_as_found=not lock.prepared)
        dist.close()
        stop.restore()
    if info is not None:
        c, t, s = info["counts"], info["throughput"], info["session"]
        # a resume with nothing left keeps the last session's throughput in run.json; it is not this one's
        this = (f"this session {s['records']} records in {s['seconds']:.1f} s on {s['processes']} process(es): "
                f"{t['images_per_s']:.2f} images/s, {t['words_per_s']:.1f} words/s" if s["records"]
                else f"this session explained none ({s['errors']} failed)" if s["errors"]
                else "nothing was left to explain")
        gone = c.get("index_records", c["done"]) - c["done"]
        kept = (f"; {gone} record{'s' if gone != 1 else ''} of the folder {'are' if gone != 1 else 'is'} no longer "
                "in the manifest (kept: dcam view and load_run show them)") if gone > 0 else ""
        print(f"{c['done']} of {c['records']} records explained into {args.out} ({c['words']} words); "
              f"{c['errors']} failed (errors.jsonl); {this}{kept}")
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM before the run started writing (:class:`SigtermAsInterrupt`): handled as Ctrl-C is."""


class SigtermAsInterrupt:
    """SIGTERM raising :class:`Terminated` from :meth:`install` to :meth:`restore`, so that the ``finally`` of a
    run stopped before it writes leaves its folder as found (killed by the signal, a new folder and its lock file
    stayed behind). Only in the main thread, and only over the default action (an ignored SIGTERM stays ignored).
    :meth:`hold`: a SIGTERM from then on waits for :meth:`restore`, which raises it (none in the middle of a release)."""

    def __init__(self):
        self.previous = None
        self.held = self.came = False

    def _handler(self, signum, frame):
        if self.held:
            self.came = True
        else:
            self.held = True  # (one Terminated: a second SIGTERM waits, it does not cut short the first's cleanup)
            raise Terminated()

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self.previous = signal.signal(signal.SIGTERM, self._handler)

    def hold(self) -> None:
        self.held = True

    def restore(self) -> None:
        if self.previous is None:
            return
        signal.signal(signal.SIGTERM, self.previous)
        self.previous = None
        if self.came:
            raise Terminated()


def _as_options(exc: InputError) -> InputError:
    """``exc`` re-prefixed with dcam run's option (:data:`RUN_OPTIONS`), also behind the ``rank N: `` of another
    rank's error (``rank 1: out: writing ...`` named the API's argument)."""
    text = one_line(str(exc))
    rank = re.match(r"rank \d+: ", text)
    if rank is None:
        return common.argument_error(exc, RUN_OPTIONS)
    return InputError(rank.group(0) + one_line(str(common.argument_error(InputError(text[rank.end():]), RUN_OPTIONS))))


def _open_source(args):
    from ..runs.sources import open_source

    try:
        return open_source(args.manifest, split=args.split)
    except InputError as exc:  # a COCO split the folder lacks is --split's
        raise common.argument_error(exc, {"split": "--split"}) from None


def _rank_of_run() -> str:
    """This process's rank as the run has it (:func:`..runs.distributed.setup`): torchrun's ``RANK`` where
    ``WORLD_SIZE`` is above 1, else "0". (A ``RANK`` left in a one-process run's environment by another
    launcher silenced its SIGTERM line, the only process taken for a rank other than 0.)"""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:  # (refused, naming WORLD_SIZE, when the run sets up)
        world = 1
    return os.environ.get("RANK", "0") if world > 1 else "0"


def run(args) -> int:
    from ..runs.distributed import PeerFailed

    rank = _rank_of_run()
    folder = os.path.abspath(args.out) if args.out else ""  # (as the run writes it: 'link/..' taken as text)
    existed = bool(folder) and os.path.lexists(folder)
    args.writing = False
    try:
        return _run(args)
    except PeerFailed:
        return 2  # rank 0 prints the error
    except KeyboardInterrupt as exc:
        # (said "what was written into DIR is kept" when the model was still loading, DIR not even created)
        if args.writing and (existed or os.path.lexists(folder)):
            said = f"what was written into {args.out} is kept, rerun the same command to resume"
        else:
            said = "nothing was written" + (f" ({args.out} is as it was)" if existed else "")
        if isinstance(exc, Terminated):  # (the status of a process the signal ended: 128 + 15)
            # one line for the run, rank 0's: torchrun (or a scheduler's cancel) stops every rank, and each said it
            if rank == "0":
                print(f"dcam run: stopped (SIGTERM); {said}", file=sys.stderr)
            return 128 + signal.SIGTERM
        print(f"dcam run: interrupted; {said}", file=sys.stderr)
        return 130
    except InputError as exc:
        if rank != "0":  # the same error is printed by rank 0
            raise InputError(f"rank {rank}: {one_line(str(exc))}") from None
        raise exc from None
