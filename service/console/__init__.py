"""The admin web console at ``/admin``: server-rendered pages over the same service code as ``/v1/admin``
(see :mod:`service.console.routes`; its web security in :mod:`service.console.security`)."""
