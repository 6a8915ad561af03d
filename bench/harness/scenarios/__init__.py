"""The scenarios: 1-3 under wrk (``chat``), 4 paced streams (``paced``), 5 a big ledger
(``big_ledger``)."""
