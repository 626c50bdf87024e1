"""Methods built on ``fit``: generalist + specialists, soft-target trees, held-out selection."""
