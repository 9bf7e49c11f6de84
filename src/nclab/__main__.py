"""``python -m nclab``: the same command line as the ``nclab`` script."""

from nclab.cli import main

if __name__ == "__main__":
    main()
