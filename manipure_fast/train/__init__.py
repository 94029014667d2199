"""Training scripts for the bundled default models (``python -m manipure_fast.train --help``)."""
