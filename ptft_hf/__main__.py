"""`python -m ptft_hf` is the same as the `ptft-hf` console script."""

from ptft_hf.cli import main

if __name__ == "__main__":
    main()
