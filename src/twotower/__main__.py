"""``python -m twotower ...`` runs the command line (also what ``torchrun -m twotower`` needs)."""
from twotower.cli import main

main()
