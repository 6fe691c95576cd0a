"""Evaluation: the paper's metrics, data sets, faithfulness curves, the
grounding benchmark and the runner that writes the tables.

- :mod:`~dcam.eval.metrics`: Obj-IoU, contrast, concentration, F3, Func-IoU (docs/ALGORITHM.md section 8);
- :mod:`~dcam.eval.datasets`: shapes, COCO and TAM layouts (one file each);
- :mod:`~dcam.eval.faithfulness`: deletion / insertion curves;
- :mod:`~dcam.eval.grounding`: the grounding rate of object words;
- :mod:`~dcam.eval.runner`: :func:`evaluate`, comparison / ablation / sweep / faithfulness;
- :mod:`~dcam.eval.report`: tables, charts and example sheets.

Word alignment lives in :mod:`dcam.words`.
"""
from .runner import ABLATION_ROWS, ALL_METHODS, ablation_configs, evaluate

__all__ = ["evaluate", "ablation_configs", "ALL_METHODS", "ABLATION_ROWS"]
