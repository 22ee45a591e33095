"""The four services of the pipeline; each is a process with one composition root (its ``__main__``)."""
