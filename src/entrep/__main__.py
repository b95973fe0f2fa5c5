"""``python -m entrep``: the same command line as ``entrep``."""

from entrep.cli.app import main

if __name__ == "__main__":
    main()
