"""The notifier: folds run events into run records and emails the outcome."""
