"""Evaluation with lm-evaluation-harness: shipped task YAMLs (BLiMP, BANKING77, ChemProt, WikiText-2,
legal) in `tasks/`, `runner.evaluate_model` over a model in memory, `pll` (pseudo-log-likelihood) for
masked LMs, `record.score_model` (eval.json), `score.score_run` for finished folders, `cli` (`ptft-hf-eval`).
lm-eval is an extra (`pip install ptft-hf[eval]`), imported only where it is used."""
