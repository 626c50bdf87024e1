"""``python -m distill`` (also what ``torchrun -m distill`` runs): the ``distill`` command."""
import sys

from distill.cli import main

sys.exit(main())
