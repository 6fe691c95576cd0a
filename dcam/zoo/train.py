"""Train the bundled toy dMLLM from scratch on this CPU.

    python -m dcam.zoo.train --out dcam/zoo/weights [--seed 0] ...   # in a checkout: the committed weights

Stage 1 (vision pretraining): conv stem + SigLIP vision tower + an auxiliary
linear head trained on dense per-patch targets read from the label masks:
the colour, the shape and the caption index (1st/2nd/3rd object from the
left) of the object covering the patch (0 = background). This makes the
patch features local object descriptors, so the LM later has to look at an
object's image tokens to name it.

Stage 2 (masked diffusion, LLaDA): vision tower frozen; projector + LM +
lm_head trained on the response only: per sequence t ~ U(0, 1), every
response token masked with probability p = (1 - eps) t + eps, cross-entropy
on masked positions weighted by 1 / p, normalised by B * response_length.
The response is the caption followed by [EOS] up to response_length; the
[EOS] fill is trained like any other token.

Stage 3 (:func:`linearise`, ``--linearise-steps``): the LM's RMSNorm epsilon is
raised to 1e4 so the norms become nearly linear, the projector output gets a
ReLU, and stage 2's objective runs 800 more steps; this is what lets
gradient-weighted pooling localise on this model (README "Grounding").

The data are a fixed pool of generated training scenes (cached under /tmp).
At the end the model, config, tokenizer and processor are saved to ``--out``
with ``training_report.json`` (wall times, loss curves, test accuracy).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import COLOURS, SHAPES, generate_sample, split_seed
from . import WEIGHTS_DIR, ShapesDMLLM, ShapesDMLLMConfig, ShapesProcessor
from .evaluate_captions import caption_accuracy

COLOUR_IDX = {c: i + 1 for i, c in enumerate(COLOURS)}
SHAPE_IDX = {s: i + 1 for i, s in enumerate(SHAPES)}


def log(msg: str):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- data pool
def build_pool(n: int, image_size: int, patch: int, processor: ShapesProcessor, split: str = "train",
               cache_dir: str = "/tmp") -> dict:
    """Images (uint8), per-patch targets and response ids of the first n samples of ``split``."""
    path = os.path.join(cache_dir, f"dcam_shapes_pool_{split}_{n}_{image_size}_{patch}_v1.pt")
    if cache_dir and os.path.exists(path):
        try:
            pool = torch.load(path)
            log(f"loaded pool {path}")
            return pool
        except Exception:  # pragma: no cover - corrupt cache
            pass
    g = image_size // patch
    imgs = np.zeros((n, image_size, image_size, 3), np.uint8)
    tgt = np.zeros((n, 3, g, g), np.int64)  # colour, shape, index per patch
    resp = np.zeros((n, processor.response_length), np.int64)
    t0 = time.time()
    for i in range(n):
        s = generate_sample(split_seed(split, i), image_size)
        imgs[i] = np.asarray(s.image)
        # majority label per patch (ties -> lower label)
        m = s.mask.reshape(g, patch, g, patch).transpose(0, 2, 1, 3).reshape(g, g, patch * patch)
        counts = np.stack([(m == l).sum(-1) for l in range(4)], -1)
        lab = counts.argmax(-1)
        col = np.zeros(5, np.int64)
        shp = np.zeros(5, np.int64)
        for ob in s.objects:
            col[ob["label"]] = COLOUR_IDX[ob["colour"]]
            shp[ob["label"]] = SHAPE_IDX[ob["shape"]]
        tgt[i, 0] = col[lab]
        tgt[i, 1] = shp[lab]
        tgt[i, 2] = lab
        resp[i] = processor.encode_response(s.caption)
        if (i + 1) % 10000 == 0:
            log(f"  generated {i + 1}/{n} ({time.time() - t0:.0f}s)")
    pool = dict(images=torch.from_numpy(imgs), targets=torch.from_numpy(tgt), responses=torch.from_numpy(resp))
    if cache_dir:
        torch.save(pool, path)
    return pool


def to_pixels(images_u8: torch.Tensor, processor: ShapesProcessor) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> normalised float [B, 3, H, W] (same as processor.preprocess_image)."""
    x = images_u8.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
    return (x - mean) / std


def lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.05) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    q = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, q))))


# ----------------------------------------------------------------------------- stage 1
class AuxHead(nn.Module):
    """Linear per-patch classifier: colour (5), shape (4), caption index (4)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.lin = nn.Linear(hidden, 5 + 4 + 4)

    def forward(self, feats):
        y = self.lin(feats)
        return y[..., :5], y[..., 5:9], y[..., 9:]


def aux_loss(head, feats, targets):
    """feats [B, N, Hv]; targets [B, 3, g, g] -> (loss, (acc_colour, acc_shape, acc_index) on object patches)."""
    B = feats.shape[0]
    t = targets.reshape(B, 3, -1)
    outs = head(feats)
    loss = sum(F.cross_entropy(o.reshape(-1, o.shape[-1]), t[:, k].reshape(-1)) for k, o in enumerate(outs))
    with torch.no_grad():
        obj = t[:, 2] > 0
        accs = tuple(float((o.argmax(-1) == t[:, k])[obj].float().mean()) for k, o in enumerate(outs))
    return loss, accs


def train_vision(model, processor, pool, steps, batch, lr, seed, log_every=50):
    g = torch.Generator().manual_seed(seed + 1)
    head = AuxHead(model.config.vision_config.hidden_size)
    params = list(model.vision_stem.parameters()) + list(model.vision_tower.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    n = pool["images"].shape[0]
    curve = []
    run = None
    model.train()
    t0 = time.time()
    for step in range(steps):
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, steps, lr, warmup=min(100, steps // 10 + 1))
        idx = torch.randint(0, n, (batch,), generator=g)
        pix = to_pixels(pool["images"][idx], processor)
        feats = model.vision_features(pix)
        loss, accs = aux_loss(head, feats, pool["targets"][idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        cur = np.array([loss.item(), *accs])
        run = cur if run is None else 0.95 * run + 0.05 * cur
        if (step + 1) % log_every == 0 or step == steps - 1:
            curve.append(dict(step=step + 1, loss=round(float(run[0]), 4), acc_colour=round(float(run[1]), 4),
                              acc_shape=round(float(run[2]), 4), acc_index=round(float(run[3]), 4),
                              seconds=round(time.time() - t0, 1)))
            log(f"vision {step + 1}/{steps} loss {run[0]:.4f} acc colour {run[1]:.3f} shape {run[2]:.3f} "
                f"index {run[3]:.3f} ({(time.time() - t0) / (step + 1):.2f}s/step)")
    return head, curve


@torch.no_grad()
def eval_vision(model, head, processor, pool_val, batch=100):
    model.eval()
    accs = []
    for i in range(0, pool_val["images"].shape[0], batch):
        pix = to_pixels(pool_val["images"][i:i + batch], processor)
        _, a = aux_loss(head, model.vision_features(pix), pool_val["targets"][i:i + batch])
        accs.append(a)
    return tuple(float(np.mean([a[k] for a in accs])) for k in range(3))


def fit_head(model, processor, pool, n=2000, steps=300, seed=0):
    """A fresh linear per-patch head fitted on frozen vision features (when stage 1 is skipped)."""
    g = torch.Generator().manual_seed(seed + 3)
    head = AuxHead(model.config.vision_config.hidden_size)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    idx = torch.randperm(pool["images"].shape[0], generator=g)[:n]
    with torch.no_grad():
        model.eval()
        feats = torch.cat([model.vision_features(to_pixels(pool["images"][idx[i:i + 100]], processor))
                           for i in range(0, n, 100)])
    tg = pool["targets"][idx]
    for _ in range(steps):
        j = torch.randint(0, n, (64,), generator=g)
        loss, _ = aux_loss(head, feats[j], tg[j])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head


@torch.no_grad()
def init_projector_from_head(model, head):
    """Warm start: the projector's first layer begins with the per-patch classifier's rows, so the
    colour / shape / index evidence enters the LM as large, separate features from step 0."""
    lin = model.projector[0]
    k = head.lin.out_features
    lin.weight[:k] = head.lin.weight
    lin.bias[:k] = head.lin.bias


# ----------------------------------------------------------------------------- stage 2
def diffusion_loss(model, input_ids, pixel_values, response, start, mask_id, gen, eps=1e-3,
                   image_feats=None):
    """LLaDA masked-diffusion loss on the response slots (last Lr positions)."""
    B, Lr = response.shape
    t = torch.rand(B, 1, generator=gen)
    p = (1 - eps) * t + eps
    masked = torch.rand(B, Lr, generator=gen) < p
    ids = input_ids.clone()
    ids[:, start:] = torch.where(masked, torch.full_like(response, mask_id), response)
    if image_feats is not None:
        emb = model.language_model.embed_tokens(ids)
        is_img = ids == model.config.image_token_id
        emb = emb.masked_scatter(is_img.unsqueeze(-1), model.project(image_feats).to(emb.dtype))
        logits = model(inputs_embeds=emb).logits[:, start:]
    else:
        logits = model(input_ids=ids, pixel_values=pixel_values).logits[:, start:]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), response.reshape(-1), reduction="none")
    ce = ce.view(B, Lr) * masked / p
    return ce.sum() / (B * Lr), masked


def train_lm(model, processor, pool, steps, batch, lr, seed, log_every=50, vision_lr=0.0, head=None):
    g = torch.Generator().manual_seed(seed + 2)
    if head is not None:
        init_projector_from_head(model, head)
    train_vision_too = vision_lr > 0
    for p_ in list(model.vision_stem.parameters()) + list(model.vision_tower.parameters()):
        p_.requires_grad_(train_vision_too)
    lm_params = list(model.projector.parameters()) + list(model.language_model.parameters()) + \
        list(model.lm_head.parameters())
    groups = [dict(params=lm_params, lr=lr, peak=lr)]
    if train_vision_too:
        vparams = list(model.vision_stem.parameters()) + list(model.vision_tower.parameters())
        groups.append(dict(params=vparams, lr=vision_lr, peak=vision_lr))
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.98), weight_decay=0.01)
    enc = processor.build(np.zeros((processor.image_size, processor.image_size, 3), np.uint8))
    template = enc["input_ids"][0]
    start = enc["response_start"]
    n = pool["images"].shape[0]
    curve = []
    run = None
    t0 = time.time()
    for step in range(steps):
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, steps, pg["peak"], warmup=min(100, steps // 10 + 1))
        idx = torch.randint(0, n, (batch,), generator=g)
        pix = to_pixels(pool["images"][idx], processor)
        response = pool["responses"][idx]
        input_ids = template.unsqueeze(0).repeat(batch, 1)
        model.train()
        if train_vision_too:
            loss, _ = diffusion_loss(model, input_ids, pix, response, start, model.config.mask_token_id, g)
        else:
            model.vision_tower.eval()
            with torch.no_grad():
                feats = model.vision_features(pix)
            loss, _ = diffusion_loss(model, input_ids, pix, response, start, model.config.mask_token_id, g,
                                     image_feats=feats)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p_ for grp in groups for p_ in grp["params"]], 1.0)
        opt.step()
        lv = loss.item()
        run = lv if run is None else 0.95 * run + 0.05 * lv
        if (step + 1) % log_every == 0 or step == steps - 1:
            curve.append(dict(step=step + 1, loss=round(run, 4), seconds=round(time.time() - t0, 1)))
            log(f"lm {step + 1}/{steps} loss {run:.4f} ({(time.time() - t0) / (step + 1):.2f}s/step)")
    for p_ in model.parameters():
        p_.requires_grad_(True)
    model.eval()
    return curve


# ----------------------------------------------------------------------------- stage 3
@torch.no_grad()
def set_rms_norm_eps(model, eps: float, typical_rms: float = 4.0):
    """Set the LM's RMSNorm epsilon; rescale each norm weight by sqrt(typical_rms^2 + eps) /
    sqrt(typical_rms^2 + old eps) so that a state of RMS ``typical_rms`` keeps its scale."""
    model.config.text_config.rms_norm_eps = float(eps)
    for m in model.language_model.modules():
        if hasattr(m, "variance_epsilon") and hasattr(m, "weight"):
            old = float(m.variance_epsilon)
            m.weight.mul_(math.sqrt(typical_rms ** 2 + eps) / math.sqrt(typical_rms ** 2 + old))
            m.variance_epsilon = float(eps)


def linearise(model, processor, pool, steps, batch, lr, seed, eps=1e4, log_every=50):
    """Stage 3: make the LM's norms nearly linear and the image embeddings non-negative,
    then fine-tune the LM (projector + LM + head) to the new regime.

    RMSNorm(h) = g * h / sqrt(mean(h^2) + eps) is scale invariant in h when eps is tiny,
    and every block reads an image token only through it, so the gradient of any score
    w.r.t. a token's state is orthogonal to that state (tests/eval/test_grounding.py). That
    leaves gradient-weighted pooling (docs/ALGORITHM.md section 1) without per-token evidence. With eps
    far above mean(h^2) (states here have RMS ~4, eps 1e4) the norm is a fixed scaling,
    the gradient follows what the LM reads from a token, and relu(A) (non-negative
    embeddings) lines up with the positive part of it. Measured effect: README "Grounding"."""
    set_rms_norm_eps(model, eps)
    model.config.projector_relu = True
    model.config.default_probe_layer = 0
    # signed channel weights (docs/ALGORITHM.md section 1 with grad_relu=False) ground better
    # on this model than the positive part alone: README "Grounding"
    model.config.cam_config = {"grad_relu": False}
    return train_lm(model, processor, pool, steps, batch, lr, seed, log_every=log_every)


# ----------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # no default into the package: from an installed dcam that replaced the bundled model (the one
    # dcam demo, eval and grounding load) with whatever this run trained
    ap.add_argument("--out", required=True, help=f"folder for the trained model (the bundled one: {WEIGHTS_DIR})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pool", type=int, default=30000, help="training scenes in the fixed pool")
    ap.add_argument("--vision-steps", type=int, default=700)
    ap.add_argument("--vision-batch", type=int, default=32)
    ap.add_argument("--vision-lr", type=float, default=2e-3)
    ap.add_argument("--lm-steps", type=int, default=1400)
    ap.add_argument("--lm-batch", type=int, default=16)
    ap.add_argument("--lm-lr", type=float, default=2e-3)
    ap.add_argument("--lm-vision-lr", type=float, default=0.0, help="fine-tune the vision tower in stage 2 (0: frozen)")
    ap.add_argument("--no-warm-projector", dest="warm_projector", action="store_false",
                    help="do not start the projector from the stage-1 per-patch classifier")
    ap.add_argument("--projector-relu", action="store_true",
                    help="non-negative image-token embeddings (config.projector_relu)")
    ap.add_argument("--image-offset", type=float, default=None,
                    help="constant on the last 4 channels of every image-token embedding (config.image_offset)")
    ap.add_argument("--linearise-steps", type=int, default=800,
                    help="stage 3 (see linearise): fine-tuning steps after the norms are made nearly linear "
                         "(0: skip stage 3)")
    ap.add_argument("--linearise-lr", type=float, default=1e-3)
    ap.add_argument("--rms-norm-eps", type=float, default=None,
                    help="set the LM's RMSNorm epsilon before training (with --init, norm weights are "
                         "rescaled to keep the scale; see set_rms_norm_eps)")
    ap.add_argument("--eval-n", type=int, default=500, help="test scenes to caption at the end (0: skip)")
    ap.add_argument("--val-n", type=int, default=200, help="val scenes to caption at the end (0: skip)")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--init", default=None, help="start from a saved model directory (skips nothing by itself)")
    ap.add_argument("--skip-vision", action="store_true", help="skip stage 1 (use with --init)")
    args = ap.parse_args(argv)
    if os.environ.get("OMP_WAIT_POLICY") is None and argv is None:
        # on a shared CPU, OpenMP's default busy-waiting makes 2-thread steps several times slower
        # and erratic; re-run this command with passive waiting (must be set before torch loads)
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
        os.execve(sys.executable, [sys.executable, "-m", "dcam.zoo.train", *sys.argv[1:]], env)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    t_start = time.time()
    processor = ShapesProcessor()
    if args.init:
        model = ShapesDMLLM.from_pretrained(args.init, local_files_only=True, attn_implementation="sdpa")
    else:
        config = ShapesDMLLMConfig(image_token_id=processor.image_token_id, mask_token_id=processor.mask_token_id,
                                   pad_token_id=processor.pad_token_id, bos_token_id=processor.bos_token_id,
                                   eos_token_id=processor.eos_token_id, response_length=processor.response_length)
        config._attn_implementation = "sdpa"
        model = ShapesDMLLM(config)
    if args.rms_norm_eps is not None:
        set_rms_norm_eps(model, args.rms_norm_eps)
    if args.projector_relu:
        model.config.projector_relu = True
    if args.image_offset is not None:
        model.config.image_offset = float(args.image_offset)
    nparams = sum(p.numel() for p in model.parameters())
    log(f"model: {nparams / 1e6:.3f}M parameters; grid {model.config.grid}; seq "
        f"{processor(np.zeros((64, 64, 3), np.uint8))['input_ids'].shape[1]}")

    t0 = time.time()
    pool = build_pool(args.pool, processor.image_size, processor.patch_size, processor)
    pool_val = build_pool(1000, processor.image_size, processor.patch_size, processor, split="val")
    t_data = time.time() - t0
    log(f"data pool ready ({t_data:.0f}s)")

    report = dict(args=vars(args), parameters=nparams, torch=torch.__version__, threads=args.threads,
                  machine=platform.processor() or platform.machine())
    t0 = time.time()
    head = None
    if not args.skip_vision:
        head, vcurve = train_vision(model, processor, pool, args.vision_steps, args.vision_batch, args.vision_lr,
                                    args.seed, log_every=args.log_every)
        vacc = eval_vision(model, head, processor, pool_val)
        log(f"vision val per-patch acc (object patches): colour {vacc[0]:.3f} shape {vacc[1]:.3f} index {vacc[2]:.3f}")
        report.update(vision_curve=vcurve, vision_val_acc=dict(colour=vacc[0], shape=vacc[1], index=vacc[2]))
    elif args.warm_projector:
        head = fit_head(model, processor, pool, seed=args.seed)
    t_vision = time.time() - t0

    t0 = time.time()
    lcurve = train_lm(model, processor, pool, args.lm_steps, args.lm_batch, args.lm_lr, args.seed,
                      vision_lr=args.lm_vision_lr, log_every=args.log_every,
                      head=head if args.warm_projector else None)
    t_lm = time.time() - t0

    t0 = time.time()
    lin_curve = None
    if args.linearise_steps > 0:
        log("stage 3: nearly linear norms, non-negative image embeddings")
        lin_curve = linearise(model, processor, pool, args.linearise_steps, args.lm_batch, args.linearise_lr,
                              args.seed, log_every=args.log_every)
    t_lin = time.time() - t0
    t_train = time.time() - t_start

    model.eval()
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)

    t0 = time.time()
    acc = val = None
    if args.eval_n > 0:
        acc = caption_accuracy(model, processor, n=args.eval_n, split="test")
        log(f"test caption accuracy (n={args.eval_n}): {json.dumps(acc)}")
    if args.val_n > 0:
        val = caption_accuracy(model, processor, n=args.val_n, split="val")
        log(f"val caption accuracy (n={args.val_n}): {json.dumps(val)}")
    t_eval = time.time() - t0
    report.update(lm_curve=lcurve, linearise_curve=lin_curve,
                  seconds=dict(data=round(t_data, 1), vision=round(t_vision, 1), lm=round(t_lm, 1),
                               linearise=round(t_lin, 1), training_total=round(t_train, 1),
                               eval=round(t_eval, 1)),
                  test_caption_accuracy=acc, val_caption_accuracy=val,
                  weights_bytes=os.path.getsize(os.path.join(args.out, "model.safetensors")))
    with open(os.path.join(args.out, "training_report.json"), "w") as f:
        json.dump(report, f, indent=1)
    log(f"done: training wall time {t_train:.0f}s; test exact match {acc['exact'] if acc else None}; "
        f"saved to {args.out}")
    return report


if __name__ == "__main__":
    main()
