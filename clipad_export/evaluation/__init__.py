"""`clipad eval`: the paper's metrics (``metrics``) over a dataset's test split (``evaluate``)."""
