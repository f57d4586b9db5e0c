"""Scoring descriptors: recall@N with the Pittsburgh / Tokyo 24/7 / TokyoTM protocols (recall,
protocols, ranking), the model-level job with its JSON and PNG outputs (run, report, plots) and
Oxford/Paris mAP (oxford_paris, map_metrics, ground_truth).
"""
