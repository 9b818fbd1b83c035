"""Main job of `make demo`. Until the training pipeline lands it reports the environment."""

from atss.env import check_environment

if __name__ == "__main__":
    for k, v in check_environment().items():
        print(f"{k:>16}: {v}")
