"""Evaluation with lm-evaluation-harness: shipped task YAMLs (BLiMP, BANKING77, ChemProt, WikiText-2,
legal), a runner over a model in memory, pseudo-log-likelihood for masked LMs, `ptft-hf-eval`.
lm-eval is an extra (`pip install ptft-hf[eval]`), imported only where it is used."""

from ptft_hf.evaluation.score import EVAL_FILE, EvalRequest, score_model, score_run

__all__ = ["EVAL_FILE", "EvalRequest", "score_model", "score_run"]
