"""The delivery engine, in the order a digest travels through it.

planning (who is due, which posts each reader gets, the ledger) -> rendering (one
rendering per distinct digest) -> personalise (each reader's values in the shared
rendering) -> mime (the bytes of one copy) -> smtp (one relay session) -> sending
(claims, outcomes, retries). `pipeline` runs one planning-and-sending pass.
"""
