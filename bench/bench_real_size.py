"""Explaining at real size: time per word and peak memory on a random-initialised
model with LLaDA-V's widths (not part of the test run).

The model: a LLaMA-style bidirectional stack (transformers' LlamaModel with an
all-zero additive mask, as LLaDA) with LLaDA's vocabulary (126,464), hidden
size --hidden (LLaDA-V: 4096; 2048 by default so the run fits 10 minutes on
a 2-core CPU), MLP width 2.75x, --blocks blocks, an anyres-sized image span of
--image-tokens tokens (image embeddings given directly: the vision tower is
not what is measured), a short prompt and a response of T words.

Measured for every T in --words (each in a process of its own unless --in-process or a single T):

- dcam: ``Explainer.explain`` of every word (masked probe, hooked block =
  the one before the last, gradients streamed in chunks of --chunk);
- the published procedure: one full forward and backward with parameter
  gradients per word (``dcam.probe.published_gradients``), timed on a few
  words and scaled to T (it is linear in T);
- the lower bound on the same graph: one forward to the hook, then plain
  ``torch.autograd.grad`` VJPs through the blocks above it, one per word,
  timed on a few words and scaled.

Peak memory is the process's peak resident set during the explanation
(VmHWM, reset right before it through /proc/self/clear_refs; on a GPU the
peak memory allocated), shown next to the model's size. Each T runs in a
fresh process, so memory one measurement freed but the allocator kept does
not count in the next.

    python bench/bench_real_size.py                    # hidden 2048, 3 blocks, 2880 image tokens, T = 16, 64
    python bench/bench_real_size.py --hidden 4096 --blocks 2
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict

import torch
from torch import nn
from transformers import LlamaConfig, LlamaModel

from dcam.explain import Explainer
from dcam.probe import ModelAdapter, Prepared, published_gradients
from dcam.probe.hooks import Tap, frozen

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # script_support, as `python bench/<this>.py` has it

from script_support import require_at_least, require_model_sizes, run_child  # noqa: E402

VOCAB, MASK_ID, IMAGE_ID, BOS, EOS = 126464, 126336, 126400, 1, 2


class RealSizeDMLLM(nn.Module):
    """LLaDA-style: token embeddings, image embeddings scattered at the image
    tokens, a bidirectional LLaMA stack, an LM head applied only where asked."""

    def __init__(self, hidden: int, blocks: int, heads: int):
        super().__init__()
        self.config = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=int(2.75 * hidden),
                                  num_hidden_layers=blocks, num_attention_heads=heads, num_key_value_heads=heads,
                                  max_position_embeddings=8192, image_token_id=IMAGE_ID)
        self.config._attn_implementation = "sdpa"
        self.model = LlamaModel(self.config)
        self.lm_head = nn.Linear(hidden, VOCAB, bias=False)

    def hidden(self, input_ids, image_embeds):
        B, L = input_ids.shape
        emb = self.model.embed_tokens(input_ids)
        span = torch.nonzero(input_ids[0] == IMAGE_ID)[:, 0]  # the same span in every row
        emb = emb.index_copy(1, span, image_embeds.to(emb.dtype).expand(B, -1, -1))
        mask = torch.zeros(B, 1, L, L, dtype=emb.dtype, device=emb.device)  # bidirectional, as LLaDA
        return self.model(inputs_embeds=emb, attention_mask=mask, use_cache=False).last_hidden_state


class RealSizeAdapter(ModelAdapter):
    name = "real-size"
    is_diffusion = True
    probes = ("full", "masked", "remask")
    default_steps = 64

    def __init__(self, model, image_tokens: int, grid):
        super().__init__(model, None)
        self.image_tokens, self._grid = image_tokens, grid
        g = torch.Generator().manual_seed(1)
        p = next(model.parameters())
        self.image_embeds = (torch.randn(1, image_tokens, model.config.hidden_size, generator=g) * 0.02).to(
            device=p.device, dtype=p.dtype)

    image_token_id = IMAGE_ID
    mask_token_id = MASK_ID
    eos_token_ids = {EOS}
    pad_token_ids = {BOS}

    def blocks(self):
        return self.model.model.layers

    def default_layer(self):
        return len(self.blocks()) - 2

    def lm_head_weight(self):
        return self.model.lm_head.weight

    def token_strings(self, ids):
        return [f"w{int(i)}" for i in ids]

    def decode(self, ids):
        return " ".join(self.token_strings(ids))

    def prepare(self, image, prompt=None, response_ids=None, response_length=None) -> Prepared:
        resp = list(response_ids or [MASK_ID] * int(response_length or 16))
        ids = [BOS, 11, 12, 13] + [IMAGE_ID] * self.image_tokens + resp
        t = torch.tensor([ids], device=self.image_embeds.device)
        return Prepared(input_ids=t, model_inputs={"image_embeds": self.image_embeds}, response_start=4 +
                        self.image_tokens, response_length=len(resp), image_positions=torch.arange(4, 4 +
                        self.image_tokens, device=t.device), grid=self._grid, image=image)

    def generate(self, prep, steps=None, response_length=None, record=False):
        raise NotImplementedError("the benchmark explains a given response")

    def forward_logits(self, input_ids, model_inputs):
        # the library's logits_at runs the head at the scored rows only, and its logits_at_rows the
        # last block too (dcam.probe.rows), as for the LLaMA-layered families
        return self.model.lm_head(self.model.hidden(input_ids, model_inputs["image_embeds"]))

    def batch_inputs(self, prep, batch):
        return dict(prep.model_inputs)


def _peak_reset(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_bytes(device: str) -> int:
    """Peak GPU memory allocated (CUDA) or the process's peak resident set (CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def lower_bound_seconds_per_word(adapter, prep, positions, ids, layer, words: int) -> float:
    """One forward to the hook (not counted), then one plain VJP per word through the blocks above it."""
    tap = Tap(adapter.blocks()[layer], None, make_leaf=True)
    with frozen(adapter.model):
        try:
            with torch.enable_grad():
                torch.set_grad_enabled(False)
                pos = torch.tensor(positions, device=prep.input_ids.device)
                masked = prep.input_ids.clone().index_fill_(1, pos, MASK_ID)  # the masked probe's input
                logits = adapter.logits_at(masked, prep.model_inputs, pos, prep.response_start)
                torch.set_grad_enabled(True)
                leaf = tap.output()
                scores = logits[0, torch.arange(len(ids), device=pos.device), torch.tensor(ids, device=pos.device)]
                t0 = time.perf_counter()
                for t in range(words):
                    torch.autograd.grad(scores[t], leaf, retain_graph=True)
                return (time.perf_counter() - t0) / words
        finally:
            tap.remove()


def run(args) -> Dict:
    torch.manual_seed(0)
    h = args.image_tokens
    grid = (48, h // 48) if h % 48 == 0 else (1, h)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    model = RealSizeDMLLM(args.hidden, args.blocks, args.hidden // 128).eval().to(device=args.device, dtype=dtype)
    adapter = RealSizeAdapter(model, args.image_tokens, grid)
    model_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
    rows = []
    from PIL import Image

    image = Image.new("RGB", (grid[1] * 14, grid[0] * 14))  # only its height reaches AKD
    layer = args.layer if args.layer is not None else adapter.default_layer()
    Explainer(adapter=adapter, layer=layer, chunk_size=args.chunk).explain(image, response=[1000, 1007],
                                                                          probe="masked")  # warm-up
    for T in args.words:
        response = [1000 + (7 * k) % 5000 for k in range(T)]
        exp = Explainer(adapter=adapter, layer=layer, chunk_size=args.chunk)
        _peak_reset(args.device)
        t0 = time.perf_counter()
        e = exp.explain(image, response=response, probe="masked")
        ours = (time.perf_counter() - t0) / T
        peak = _peak_bytes(args.device) / 1e9
        prep = adapter.prepare(image, None, response)
        pos = [prep.response_start + k for k in range(T)]
        lb = lower_bound_seconds_per_word(adapter, prep, pos, response, exp.layer, min(T, args.sample_words))
        t0 = time.perf_counter()
        published_gradients(adapter, prep, pos[:args.sample_words], response[:args.sample_words], exp.layer,
                            probe="masked")
        pub = (time.perf_counter() - t0) / len(pos[:args.sample_words])  # the words actually timed
        rows.append(dict(T=T, words=len(e.tokens), dcam_s_per_word=ours, published_s_per_word=pub,
                         lower_bound_s_per_word=lb, speedup_vs_published=pub / ours, ratio_to_lower_bound=ours / lb,
                         peak_gb=peak))
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        print(json.dumps(rows[-1]), flush=True)
    return dict(hidden=args.hidden, blocks=args.blocks, layer=layer, image_tokens=args.image_tokens, vocab=VOCAB,
                chunk=args.chunk, threads=torch.get_num_threads(), model_gb=model_gb, device=args.device,
                dtype=args.dtype, peak="GPU memory allocated" if args.device.startswith("cuda") else "RSS",
                rows=rows)


def table(res: Dict) -> str:
    lines = [f"hidden {res['hidden']}, {res['blocks']} blocks (block {res['layer']} hooked), vocabulary {res['vocab']}, {res['image_tokens']} image "
             f"tokens, chunk {res['chunk']}, {res['device']} {res['dtype']}, {res['threads']} CPU threads; model "
             f"{res['model_gb']:.2f} GB", "",
             "| T | dcam s/word | published s/word (scaled) | lower bound s/word (scaled) | x faster than published "
             f"| x lower bound | peak {res['peak']} GB |", "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['T']} | {r['dcam_s_per_word']:.3f} | {r['published_s_per_word']:.3f} | "
                     f"{r['lower_bound_s_per_word']:.3f} | {r['speedup_vs_published']:.1f} | "
                     f"{r['ratio_to_lower_bound']:.2f} | {r['peak_gb']:.2f} |")
    return "\n".join(lines)


def isolated(args) -> Dict:
    """:func:`run` of every T in a fresh process; the rows gathered into one result."""
    import tempfile

    res = None
    for T in args.words:
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            cmd = [sys.executable, __file__, "--in-process", "--words", str(T), "--json", f.name, "--hidden",
                   str(args.hidden), "--blocks", str(args.blocks), "--image-tokens", str(args.image_tokens),
                   "--chunk", str(args.chunk), "--sample-words", str(args.sample_words), "--device", args.device,
                   "--dtype", args.dtype] + (["--threads", str(args.threads)] if args.threads else []) + \
                  (["--layer", str(args.layer)] if args.layer is not None else [])
            run_child(cmd)  # (its stdout: the table of its one T, printed here as one line)
            one = json.load(open(f.name))
        res = one if res is None else dict(res, rows=res["rows"] + one["rows"])
        print(json.dumps(one["rows"][-1]), flush=True)
    return res


def parser() -> argparse.ArgumentParser:
    """The command line (also what bench/gpu_check.py builds its run from, so the two agree)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--image-tokens", type=int, default=2880)
    ap.add_argument("--words", type=lambda s: [int(v) for v in s.split(",")], default=[16, 64])
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--layer", type=int, default=None, help="hooked block (default: the one before the last)")
    ap.add_argument("--sample-words", type=int, default=2, help="words timed for the two linear baselines")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--json", default=None)
    ap.add_argument("--in-process", action="store_true", help="every T in this process (default: one process each)")
    return ap


def main(argv=None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    # a bench's own options: argparse's one-line errors (hidden 64 gave 0 heads, chunk 0 a traceback)
    require_model_sizes(ap, args, image_rows=False)
    require_at_least(ap, args, ["blocks", "image_tokens", "chunk", "sample_words"])
    # the last block's image-token gradients are identically zero: a hook needs a block above it
    if args.blocks < 2:
        ap.error(f"--blocks must be >= 2 (the hooked block needs one above it), got {args.blocks}")
    if args.layer is not None and not -args.blocks <= args.layer < args.blocks - 1 or args.layer == -1:
        ap.error(f"--layer must name a block below the last of the {args.blocks} blocks (0..{args.blocks - 2}), "
                 f"got {args.layer}")
    # checked before minutes of measuring, not after (a folder as --json lost the results; -1 threads and
    # an unavailable device were tracebacks, 0 threads was ignored)
    require_at_least(ap, args, ["words", "threads"])
    from dcam.errors import InputError
    from dcam.models import check_device
    from dcam.output import check_output_file

    try:
        check_output_file(args.json, "--json", overwrite=True)  # (the bench replaces its own results)
        check_device(args.device)
    except InputError as exc:
        ap.error(str(exc) if str(exc).startswith("--") else f"--{exc}")
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run(args) if args.in_process or len(args.words) == 1 else isolated(args)
    print(table(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
