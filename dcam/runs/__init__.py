"""Dataset runs: explain thousands to millions of records into one folder, on
one process or every GPU of many machines (torchrun), resumable after a kill;
read them back lazily; browse them in a static page (``dcam view``).

- :mod:`.sources`: what is explained (JSONL manifest, folder of images, COCO/TAM folder);
- :mod:`.runner`: :func:`run_dataset`, the per-rank loop over ``Explainer.explain_batch``;
- :mod:`.distributed`: torch.distributed setup (gloo on CPU, nccl on GPU);
- :mod:`.folder`: fingerprint, lock, resume-or-refuse, run.json;
- :mod:`.store` / :mod:`.writer`: shards, index and error files, written so a kill leaves no half-file;
- :mod:`.records`: images, masks, word labels and per-record metrics;
- :mod:`.finish`: merging, metrics over every rank, the final run.json;
- :mod:`.reader`: :func:`load_run`;
- :mod:`.viewer`: the run's page (``DIR/index.html``) over :mod:`dcam.render.html`;
- :mod:`.benchmark`: a manifest of the bundled benchmark's images, and throughput.

The folder's format is documented in docs/RUNS.md and :mod:`.store`.
"""
from .reader import Run, RunRecord, load_run
from .runner import RunOptions, run_dataset
from .sources import open_source

__all__ = ["load_run", "Run", "RunRecord", "run_dataset", "RunOptions", "open_source"]
