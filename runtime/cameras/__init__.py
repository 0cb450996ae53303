"""Industrial cameras (GenICam: GigE Vision, USB3 Vision) through Aravis: the --source spec and its
settings (``spec``), Aravis itself, imported only when a camera is used (``aravis``), and the
source (``genicam``)."""
