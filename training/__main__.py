"""`python -m training stage1|stage2|merge --config FILE [key=value ...]` or `convert-for-serving SRC DST`."""

from training.cli import main

if __name__ == "__main__":
    main()
