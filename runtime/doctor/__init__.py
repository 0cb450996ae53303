"""`clipad doctor`: what this machine gives clipad, and why not the rest.

Each probe (``probes``) runs in its own Python process and answers with a typed record
(``facts``), so a package that fails to import, or crashes the interpreter, becomes a finding
instead of ending the command; the probes run side by side. ``verdicts`` turns the records into
one verdict per backend and warnings (pure, tested with records for what cannot exist here, a
GPU above all); ``report`` runs everything and renders text or JSON. Nothing heavy is imported
by these modules themselves.
"""
