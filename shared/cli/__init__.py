"""``exportctl``: the operators' and admins' command line."""
