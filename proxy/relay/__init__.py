"""The public port: one set of rules (rules.py), two ways of relaying that follow them."""
