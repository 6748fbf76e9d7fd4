"""`ptft-hf-merge RUN_DIR`: merge a run's adapter into its base model and check the logits."""

from __future__ import annotations

import argparse
import logging
import sys

from ptft_hf.errors import UserError, report_problems

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def merge_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ptft-hf-merge",
        description="Merge a LoRA/DoRA/QLoRA run's adapter into its base (QLoRA: dequantised first), keeping its "
                    "tokenizer, generation_config (end-of-turn stop ids) and a classifier's labels, and check that the "
                    "saved model's logits, and a causal LM's greedy answers, equal the adapter model's.",
    )
    parser.add_argument("run_dir", help="a run folder (with model/) or an adapter folder")
    parser.add_argument("--output", help="where to save the merged model (default: RUN_DIR/merged)")
    parser.add_argument("--atol", type=float, default=None,
                        help="largest allowed logit difference (default: 1e-3 for a float32 base, 0.15 for bfloat16)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from ptft_hf.hub.merge import merge_adapter

    try:
        result = merge_adapter(args.run_dir, args.output, atol=args.atol, overwrite=args.overwrite)
    except UserError as err:
        if args.verbose:
            raise
        return report_problems("ptft-hf-merge", err)
    print(f"merged model saved to {result.output_dir}; largest logit difference {result.max_abs_diff:.3g} "
          f"(tolerance {result.atol:g}){' after dequantising the 4-bit base' if result.quantized_base else ''}"
          + (f"; the same greedy answers {result.answers} (stop ids {result.eos_token_id})" if result.answers else ""))
    return 0


def main() -> None:
    sys.exit(merge_main())


if __name__ == "__main__":
    main()
