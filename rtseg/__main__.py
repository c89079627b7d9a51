"""``python -m rtseg`` (also what ``torchrun -m rtseg`` runs)."""

from .cli import main

if __name__ == "__main__":
    main()
