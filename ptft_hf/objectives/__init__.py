"""Objectives: each turns loaded texts, a tokenizer and a strategy into a model, data sets, collators
and metrics for the Trainer. clm: causal LM on packed blocks; mlm: masked LM on packed blocks;
classification: sequence classification with dynamic padding and length-grouped batches."""

from __future__ import annotations

from ptft_hf.objectives.base import Prepared
from ptft_hf.objectives.classification import prepare_classification
from ptft_hf.objectives.clm import prepare_clm
from ptft_hf.objectives.mlm import prepare_mlm
from ptft_hf.objectives.sft import prepare_sft

OBJECTIVES = {"clm": prepare_clm, "mlm": prepare_mlm, "classification": prepare_classification, "sft": prepare_sft}

__all__ = ["OBJECTIVES", "Prepared"]
