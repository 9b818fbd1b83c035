"""Evaluation beside COCO AP: precision / recall / F1 at one IoU ("field metrics")."""

from typing import Optional

from .pr_metrics import (
    FieldMetricsEvaluator,
    best_f1_point,
    field_metrics,
    format_table,
    match_detections,
    operating_point,
    plot_pr_curves,
    pr_curve,
)

__all__ = [
    "FieldMetricsEvaluator",
    "best_f1_point",
    "build_evaluator",
    "field_metrics",
    "format_table",
    "match_detections",
    "operating_point",
    "plot_pr_curves",
    "pr_curve",
]


def _test_dataset_name(cfg) -> Optional[str]:
    evaluator = cfg.dataloader.get("evaluator", None)
    name = evaluator.get("dataset_name", None) if hasattr(evaluator, "get") else None
    if name is None:
        names = cfg.dataloader.test.dataset.get("names", None)
        name = names if isinstance(names, str) else None
    return name


def build_evaluator(cfg):
    """
    The config's ``dataloader.evaluator`` (e.g. COCOEvaluator) together with a
    :class:`FieldMetricsEvaluator` on the same dataset, at ``test.iou_threshold`` (default 0.5)
    and ``test.score_threshold`` (default None), writing into ``train.output_dir``. Only the
    config's evaluator when the test set is not one named dataset.
    """
    from detectron2.config import instantiate
    from detectron2.evaluation import DatasetEvaluators

    evaluator = instantiate(cfg.dataloader.evaluator)
    name = _test_dataset_name(cfg)
    if name is None:
        return evaluator
    test = cfg.get("test", None) or {}
    field = FieldMetricsEvaluator(
        name,
        iou_threshold=test.get("iou_threshold", 0.5),
        score_threshold=test.get("score_threshold", None),
        output_dir=cfg.train.get("output_dir", None),
    )
    return DatasetEvaluators([evaluator, field])
