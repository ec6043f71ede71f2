"""Reading a training run's logs as it goes."""

import csv

def logged_steps(path):
    """The steps of a run's train_log.csv so far ([] before it exists)."""
    if not path.exists():
        return []
    with open(path) as file:
        return [int(row["step"]) for row in csv.DictReader(file)]
