"""The application layer: one use case per operation, whoever asks (admin API, exportctl, a service).

Each use case is a function taking the stores, publishers and checks it needs as arguments; the
composition root of each entry point wires them. Entry points translate a :class:`Refused` into
their own language (a problem response, a line on stderr) without changing its reason, so the same
refusal reads the same everywhere. This package imports no web framework and no Kafka client.
"""
