"""What every subcommand shares: the parser class, the error policy, the
common options and progress lines.

Error policy (README "Errors"): bad input is a :class:`dcam.InputError` (or an
argparse error): one line on stderr naming the argument or option, exit code
2, no traceback. Ctrl-C: one line, exit code 130, no partial output (outputs
are written into a temporary folder and renamed into place at the end,
:mod:`dcam.output`). Anything else is a bug in dcam: its traceback, exit 1.

This module imports nothing heavy (no torch), so ``dcam --help`` is fast.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Callable, Dict, List, Optional, Sequence

from ..errors import InputError, one_line
from .adapter_option import ADAPTER_OPTIONS, adapter_class, family_option, loaded_by_adapter, \
    use_adapter_option  # noqa: F401  (the commands' --adapter, kept here with the other options)

#: The map methods (checked again by dcam.methods when the model is built;
#: listed here so that building the parser imports no torch).
METHOD_NAMES = ("diffusion-cam", "grad-cam", "llava-cam", "tam")
PROBE_NAMES = ("full", "masked", "remask")
TARGET_SCORE_NAMES = ("logit", "contrastive")


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``dcam explain: error: --steps: ...``, exit 2)
    and every option's default shown in ``--help``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D401 - argparse's hook
        print(f"{self.prog}: error: {one_line(message)}", file=sys.stderr)
        raise SystemExit(2)


def plain_text(text: str) -> str:
    """A docstring as plain text for --help: reST roles (:func:`x`) and inline
    literals (``x``) lose their markup."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text)
    return re.sub(r"``([^`]+)``", r"\1", text)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each help text; descriptions kept as written, as
    plain text (module docstrings double as descriptions)."""

    def _format_text(self, text):
        return super()._format_text(plain_text(text))

    def _get_help_string(self, action):
        text = action.help or ""
        # identity, not ==: a default of 0 is shown (0 == False)
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS \
                or "%(default)" in text or "(default:" in text:
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text + " (default: %(default)s)"
        return text


def log(msg: str, quiet: bool = False) -> None:
    """A progress line on stderr (silenced by --quiet)."""
    if not quiet:
        print(f"[dcam] {msg}", file=sys.stderr, flush=True)


def option_error(option: str, exc: BaseException) -> InputError:
    """An InputError whose message starts with the CLI option that caused it."""
    return InputError(f"{option}: {without_argument(exc)}")


def without_argument(exc: BaseException) -> str:
    """``exc``'s message, one line, without the API argument it starts with (``"model: "``, ...)."""
    text = one_line(str(exc))
    for prefix in ("model: ", "family: ", "dtype: ", "device: ", "image: ", "targets: ", "steps ", "background: ",
                   "response: ", "prompt: ", "layer: ", "probe: ", "view: ", "trajectory: ", "dataset: ",
                   "methods: ", "split ", "image_size ", "run: ", "config: ", "pan_and_scan: "):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


def argument_error(exc: InputError, options: Dict[str, str]) -> InputError:
    """``exc`` re-prefixed with the CLI option of the API argument its message starts
    with (``options``: argument name -> option), or ``exc`` itself when it names none."""
    text = one_line(str(exc))
    name = re.match(r"[A-Za-z_]*", text).group(0)
    option = options.get(name)
    if not option:
        return exc
    # "name: why", "name must be ..." or "name='x' is not ...": the option takes the argument's place
    rest = text[len(name):]
    rest = rest[2:] if rest.startswith(": ") else rest[1:] if rest.startswith("=") else rest.lstrip()
    return InputError(f"{option}: {rest}")


def run_command(command: str, handler: Callable, args) -> int:
    """Run a subcommand handler under the error policy; returns the exit code."""
    try:
        use_adapter_option(args)  # (before the model loads: a bad --adapter is said at once)
        return int(handler(args) or 0)
    except InputError as exc:
        print(f"dcam {command}: error: {one_line(str(exc)) or type(exc).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        done = getattr(exc, "target", None)  # (dcam.output.InterruptedAfterWriting: the output was in place)
        print(f"dcam {command}: interrupted; " + (f"{done} was written whole (the folder it replaced is gone)"
                                                  if done else "nothing was written"), file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `dcam families | head`: the reader closed the pipe; stop quietly (Python would print the error again
        # when it flushes stdout at exit, so stdout is pointed at /dev/null), with the code of a SIGPIPE death
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


# ------------------------------------------------------------------ value types (argparse `type=`)

def int_at_least(lo: int):
    """An argparse `type=` for ints >= lo (the message says the bound), at most sys.maxsize:
    a larger one was an OverflowError traceback where it became a C integer (len(), seeds)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int >= {lo}, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"expected an int >= {lo}, got {v}")
        if v > sys.maxsize:
            raise argparse.ArgumentTypeError(f"expected an int in [{lo}, {sys.maxsize}], got {v}")
        return v
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def batch_slack(text: str) -> float:
    """``--batch-slack``: a number >= 0, or ``inf`` (one padded batch: :func:`dcam.batching.check_slack`)."""
    from ..batching import check_slack

    try:
        return check_slack("--batch-slack", float(text))
    except (ValueError, InputError):  # ("x" is not a float; -1 and nan are refused by check_slack)
        raise argparse.ArgumentTypeError(f"expected a number >= 0 or inf, got {text!r}") from None


def add_batch_slack_option(p: argparse.ArgumentParser) -> None:
    from ..batching import WORK_SLACK

    p.add_argument("--batch-slack", type=batch_slack, default=WORK_SLACK, metavar="X",
                   help="how much padded work a batch may waste, as a fraction of its examples' own; inf: every "
                        "example that can share a padded forward in one batch, for a GPU that one example leaves "
                        "idle; the default is sized on a CPU, where a batch is no faster than its examples apart "
                        f"(default: {WORK_SLACK})")


def non_empty_name(text: str) -> str:
    """argparse type: a name, not an empty string (``--family ""`` was taken as 'detect')."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a name, got {text!r}")
    return text


def int_in(lowest: int, highest: int) -> Callable[[str], int]:
    """argparse type: an int in [``lowest``, ``highest``]."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or not lowest <= v <= highest:
            raise argparse.ArgumentTypeError(f"expected an int in [{lowest}, {highest}], got {text!r}")
        return v
    return parse


def colour(text: str):
    """argparse type: a colour (:func:`dcam.images.parse_colour`) as an RGB triple."""
    from ..images import parse_colour

    try:
        return parse_colour(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[-1]) from None


def int_list(text: str) -> List[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of ints, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one int")
    return vals


def name_list(choices: Sequence[str]) -> Callable[[str], List[str]]:
    def parse(text: str) -> List[str]:
        vals = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in vals if v not in choices]
        if bad or not vals:
            raise argparse.ArgumentTypeError(f"unknown value(s) {bad or [text]} (choose from {', '.join(choices)})")
        return vals
    return parse


# ------------------------------------------------------------------ shared options

def cam_help() -> str:
    from ..ops.config import FIELD_HELP

    fields = "; ".join(f"{k}: {v}" for k, v in FIELD_HELP.items())
    return ("set a CamConfig field on top of the model's default config, repeatable, e.g. --cam grad_relu=true "
            f"--cam sicd=context (default: the model's recommended config). Fields and ranges: {fields}")


def add_model_options(p: argparse.ArgumentParser, hidden: bool = False) -> None:
    p.add_argument("--model", default=None, metavar="DIR",
                   help=argparse.SUPPRESS if hidden else
                   "model folder (a transformers checkpoint or a saved zoo model); default: the bundled toy dMLLM")
    p.add_argument("--device", default="cpu", help="torch device to run the model on (cpu, cuda, cuda:1, mps)")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                   help=argparse.SUPPRESS if hidden else "load the model in this dtype (default: as saved)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help=argparse.SUPPRESS if hidden else
                   "run modeling code shipped with the checkpoint (Dream-VL and other remote-code models)")
    if hidden:  # (dcam demo: the bundled model, which has no crops; argparse cannot hide a group's options)
        return
    crops = p.add_mutually_exclusive_group()  # (one option and its --no- form: the third state is neither)
    for flag, on, what in (("--pan-and-scan", True, "also show the model crops of a wide or tall image, each with "
                            "its own tokens (views highres and base)"), ("--no-pan-and-scan", False, "no crops")):
        crops.add_argument(flag, dest="pan_and_scan", action="store_const", const=on, default=None,
                           help=f"Gemma 3's pan-and-scan: {what}; refused for a model whose processor has none "
                                "(default: as the checkpoint's preprocessor config says, its do_pan_and_scan)")


def add_family_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", default=None, metavar="NAME", type=non_empty_name,
                   help="treat the model as this family (see `dcam families`); default: detected from its config")
    p.add_argument("--adapter", default=None, metavar="MODULE:CLASS", type=non_empty_name,
                   help="explain the model with your own dcam.probe.ModelAdapter subclass CLASS of MODULE (imported "
                        "as `python -m` would, the current folder first; docs/FAMILIES.md); instead of --family "
                        "(default: the family's adapter)")


def add_method_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default="diffusion-cam", choices=METHOD_NAMES, help="map method")
    p.add_argument("--probe", default=None, choices=PROBE_NAMES,
                   help="probe mode (default: masked for diffusion models, full otherwise)")
    p.add_argument("--layer", type=int, default=None,
                   help="block to hook, negative from the end (default: the model's default block)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="denoising steps for generation (default: the model's default); a causal "
                        "(autoregressive) model's answer is not cut by them: there they only set the step count "
                        "AKD's kernel reads (default: one per generated token)")
    p.add_argument("--chunk-size", type=positive_int, default=16,
                   help="gradients per batched backward (targets x the images of a batch)")
    p.add_argument("--memory-budget", type=memory_size, default=None, metavar="SIZE",
                   help="memory the probe may use, e.g. 8GB: chooses the backward chunk size (overrides "
                        "--chunk-size) (default: no budget, --chunk-size decides)")
    p.add_argument("--granularity", default="words", choices=("words", "tokens"),
                   help="explain whole words (the pieces of a word are one map) or every token")
    p.add_argument("--view", default=None,
                   help="image view; the model decides which exist: every model has default (its usual map: the "
                        "stitched high-resolution grid where there is one) and all (every view), anyres and tiling "
                        "families (LLaVA-NeXT/OneVision, LLaDA-V, LaViDa, Idefics3, SmolVLM, Gemma 3 with pan-and-scan) also base and highres, the VQ ones (mmada, lumina-dimoo) image (default: default)")
    p.add_argument("--cam", action="append", default=None, metavar="NAME=VALUE", help=cam_help())


def memory_size(text: str) -> int:
    """``--memory-budget``: bytes from "8GB", "512MiB", "1.5 gb" (:func:`dcam.probe.memory.parse_size`)."""
    from ..probe.memory import parse_size

    try:
        return parse_size(text, "--memory-budget")
    except InputError as exc:
        raise argparse.ArgumentTypeError(one_line(str(exc)).replace("--memory-budget must be ", "expected ")) \
            from None


#: --threads beyond this: 100000 made torch fail to start its threads and then crash (SIGSEGV)
MAX_THREADS = 1024


def add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int_in(1, MAX_THREADS), default=None,
                   help=f"torch CPU threads, at most {MAX_THREADS} (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress lines or bars on stderr")


def apply_run_options(args) -> None:
    """--threads and --quiet, applied before any model is loaded."""
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(int(args.threads))
    if getattr(args, "quiet", False):
        silence_progress()


def silence_progress() -> None:
    """Silence every progress bar, transformers' weight loader included."""
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


def model_location(args) -> str:
    """The folder ``--model`` reads (the bundled toy dMLLM's without it): outputs never go over it."""
    from ..zoo import WEIGHTS_DIR

    return getattr(args, "model", None) or WEIGHTS_DIR


def load_model_for(args):
    """(model, processor) of ``--model`` on ``--device``; errors name the option."""
    from ..models import check_device, load_model

    try:
        check_device(getattr(args, "device", None))
    except InputError as exc:
        raise option_error("--device", exc) from None
    crops = getattr(args, "pan_and_scan", None)
    own = loaded_by_adapter(args)  # an --adapter class that loads its own model (ModelAdapter.load_model)
    try:
        if own is not None:
            return own()
        with loader_warnings_off():
            loaded = load_model(args.model, device=getattr(args, "device", None),
                                trust_remote_code=getattr(args, "trust_remote_code", False),
                                dtype=getattr(args, "dtype", None), pan_and_scan=crops)
    except InputError as exc:
        raise option_error(("--pan-and-scan" if crops else "--no-pan-and-scan")
                           if str(exc).startswith("pan_and_scan:") else "--model", exc) from None
    check_adapter_takes_toy(args, *loaded)
    return loaded


def check_adapter_takes_toy(args, model, processor) -> None:
    """--adapter without --model: the bundled toy is what is explained; an adapter written for another model is
    told to give --model (the line was the adapter's complaint about the toy: "ShapesDMLLM has no image token id")."""
    family = getattr(args, "family", None)
    if family not in ADAPTER_OPTIONS or getattr(args, "model", None) is not None:
        return
    from ..probe import auto_adapter

    try:
        auto_adapter(model, processor, family=family).check_image_tokens()
    except InputError as exc:
        why = without_argument(exc)
        raise InputError(f"--adapter: {family} cannot explain the bundled toy dMLLM, which dcam loads without "
                         f"--model ({why}); give --model DIR, the model it is for") from None


class loader_warnings_off:
    """transformers' log records (a multi-line "LOAD REPORT" table for a broken
    checkpoint) silenced while a model loads: what is wrong comes back as the
    one-line InputError; the "Loading weights" bar stays (--quiet removes it)."""

    def __enter__(self):
        from transformers.utils import logging as hf_logging

        self.level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        return self

    def __exit__(self, *exc):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(self.level)
        return False


def check_family(model, processor, family: Optional[str]) -> None:
    """Refuse a --family that is unknown or does not fit the model (errors name --family), or an
    --adapter that cannot make or read the model (errors name --adapter)."""
    if family is None:
        return
    from ..probe import auto_adapter

    try:
        adapter = auto_adapter(model, processor, family=family)
        if family in ADAPTER_OPTIONS:  # the user's adapter says where the image tokens are (said later, unnamed)
            adapter.check_image_tokens()
    except InputError as exc:
        raise option_error(family_option(family), exc) from None


def cam_config_for(model, processor, settings: Optional[Sequence[str]], family: Optional[str] = None):
    """The model's default CamConfig with ``--cam`` settings applied (None without settings)."""
    if not settings:
        return None
    from ..probe import auto_adapter

    try:
        adapter = auto_adapter(model, processor, family=family)
    except InputError as exc:
        raise option_error(family_option(family) if family else "--model", exc) from None
    try:
        return adapter.default_config().apply(settings)
    except InputError as exc:
        raise option_error("--cam", exc) from None


def explainer_for(model, processor, args):
    """The Explainer of the shared method options; errors name the option."""
    from ..batching import WORK_SLACK
    from ..explain import Explainer

    family = getattr(args, "family", None)
    config = cam_config_for(model, processor, getattr(args, "cam", None), family)
    try:
        exp = Explainer(model, processor, layer=args.layer, method=args.method, config=config,
                         chunk_size=args.chunk_size, memory_budget=getattr(args, "memory_budget", None),
                         granularity=getattr(args, "granularity", "words"), view=getattr(args, "view", None),
                         batch_slack=getattr(args, "batch_slack", WORK_SLACK),  # (demo and eval have no option)
                         **({"family": family} if family else {}))
    except InputError as exc:
        text = str(exc)
        if text.startswith("memory_budget"):  # keeps its type: dcam run tells a BudgetError apart
            raise type(exc)(str(argument_error(exc, {"memory_budget": "--memory-budget"}))) from None
        option = (family_option(family) if family and text.startswith("family") else
                  "--cam" if text.startswith("config:") else
                  "--layer" if "layer" in text and args.layer is not None else
                  "--method" if "method" in text else "--chunk-size" if "chunk_size" in text else
                  "--view" if text.startswith("view") else
                  # an --adapter reads the model for dcam: what it cannot find there is the adapter's to say
                  "--adapter" if family in ADAPTER_OPTIONS and not text.startswith("model:") else "--model")
        raise option_error(option, exc) from None
    if getattr(args, "target_score", None) is not None and not exp.method.needs_gradients:
        raise InputError(f"--target-score: the {args.method} method differentiates no score; leave "
                         "--target-score out")
    return exp


def record_command(e, args) -> None:
    """Add to an explanation's provenance (meta.json) what the command knows and the explainer does not: the
    command line, and the digests of the model's files (as run.json records them; the folder's once per
    command), so that the saved folder says what to run again, on which weights."""
    import os

    from ..provenance import command
    from ..runs.folder import model_identity

    record = e.extra.get("provenance")
    if record is None:
        return
    record["command"] = command(getattr(args, "command_line", None))
    if not hasattr(args, "model_files"):
        folder = getattr(args, "model", None)
        args.model_files = model_identity(folder) if folder is None or os.path.isdir(folder) else None
    record["model"] = {**record.get("model", {}), "files": args.model_files}


def save_explanation(e, target: str, args, max_side: Optional[int] = None,
                     trajectory_bytes: Optional[int] = None) -> None:
    """Write an Explanation's files into --out, whole or not at all (errors name --out); the page's
    trajectory within ``trajectory_bytes`` (None: the page's default), its command recorded."""
    from ..output import AtomicFolder

    record_command(e, args)
    with AtomicFolder(target, overwrite=args.overwrite, option="--out") as tmp:
        if max_side is None:
            e.write_files(tmp, trajectory_bytes=trajectory_bytes)
        else:
            e.write_files(tmp, max_side=max_side, trajectory_bytes=trajectory_bytes)
