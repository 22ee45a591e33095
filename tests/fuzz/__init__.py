"""Property-based fuzzing of every topic's decode path and of the admin API's validation (issue 12).

In-process (no broker, no server). ``make test`` runs the bounded forms (2,000 cases a property, 200 polls of the
consumer loop, Schemathesis with the admin token on 10 examples and the coverage phase's valid values); ``make
fuzz`` (``pytest -m fuzz``) runs them and the long forms (marked ``long``: 10,000 cases, 1,000 polls, every token
on 40 examples with the whole coverage phase, and that phase over HTTP in tests/integration/test_admin_api.py).
"""
